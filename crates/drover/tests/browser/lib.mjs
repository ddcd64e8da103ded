// What the browser scripts share: the environment, chromium, one line per check, and the
// page's problems (script errors, what the page's policy blocked, dialogs).

import { chromium } from "playwright-core";

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

export const timeout = 20_000;

export async function launch() {
  return chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    // Root in a container has no user namespaces for chromium's sandbox.
    args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
  });
}

/// `check(what, fn)` prints `ok <what>` or `FAIL <what>: <why>`; `failed()` says whether any failed.
export function checker() {
  let failed = false;
  const check = async (what, fn) => {
    try {
      await fn();
      console.log(`ok ${what}`);
    } catch (e) {
      failed = true;
      console.log(`FAIL ${what}: ${String(e?.message ?? e).split("\n")[0]}`);
    }
  };
  return { check, failed: () => failed };
}

/// Collects what went wrong in the page: script errors, console errors (a 401 is the console
/// asking who is signed in, or a refused password: not a problem; `allowed`, matched against
/// the message and the URL, may admit others), and
/// any dialog (the console never opens one).
export function watch(page, problems, allowed = /status of 401/) {
  page.on("console", (m) => {
    const what = `${m.text()} (${m.location().url})`;
    if (m.type() === "error" && !allowed.test(what)) problems.push(what);
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("dialog", (d) => {
    problems.push(`a dialog opened: ${d.message()}`);
    void d.dismiss();
  });
}

export async function login(page, user, password) {
  await page.getByLabel("User").fill(user, { timeout });
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Nodes" }).waitFor({ timeout });
}

/// A TCP relay on loopback in front of `url` (https://HOST:PORT): the page can be loaded
/// through it, and `drop()` cuts every connection it carries, as a network that goes away
/// does (new connections are relayed again).
export async function relay(url) {
  const net = await import("node:net");
  const target = new URL(url);
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `https://127.0.0.1:${server.address().port}`,
    drop() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close() {
      this.drop();
      server.close();
    },
  };
}
