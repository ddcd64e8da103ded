// Drives Debian's chromium (headless, through playwright-core) through Drover's web console as
// a user would, and prints one line per check: `ok <what>`, or `FAIL <what>: <why>` and exit 1.
//
// Environment: CONSOLE_URL, CONSOLE_USER, CONSOLE_PASSWORD, NODE_ID, NODE_NAME, NODE_TAGS (the
// node's tags as the table shows them), CHROMIUM (the browser's path), DOWNLOADS (a directory
// for the report).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { checker, env, launch, timeout, watch } from "./lib.mjs";

const url = env("CONSOLE_URL");
const browser = await launch();
const { check, failed } = checker();

try {
  // The server's certificate is from its own CA, which this browser profile does not know.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true });
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);

  const methodsAsked = page.waitForResponse((r) => r.url().endsWith("/api/v1/auth/methods"), { timeout });
  const first = await page.goto(url, { timeout });
  await check("the page is served with its security headers", async () => {
    const h = first?.headers() ?? {};
    const csp = h["content-security-policy"] ?? "";
    for (const want of ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"]) {
      if (!csp.includes(want)) throw new Error(`CSP ${JSON.stringify(csp)} lacks ${want}`);
    }
    if (h["x-content-type-options"] !== "nosniff" || h["x-frame-options"] !== "DENY") {
      throw new Error(`headers ${JSON.stringify(h)}`);
    }
  });
  await check("no identity provider is offered by a server without one", async () => {
    await page.getByRole("button", { name: "Sign in" }).waitFor({ timeout });
    // The page asks the server which methods it has; look once it has the answer.
    const methods = await (await methodsAsked).json();
    if (methods.password !== true || "oidc" in methods) throw new Error(`methods ${JSON.stringify(methods)}`);
    await page.waitForLoadState("networkidle", { timeout });
    if ((await page.locator("#login-oidc").count()) !== 0) throw new Error("a provider's button is shown");
  });
  await check("a wrong password is refused on the page", async () => {
    await page.getByLabel("User").fill(env("CONSOLE_USER"), { timeout });
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "wrong user name or password" }).waitFor({ timeout });
  });
  await check("log in", async () => {
    await page.getByLabel("Password").fill(env("CONSOLE_PASSWORD"));
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Nodes" }).waitFor({ timeout });
  });
  const nodeRow = () => page.locator(`tr[data-node="${env("NODE_ID")}"]`);
  await check("the node list shows the test agent, online", async () => {
    await nodeRow().waitFor({ timeout });
    const text = await nodeRow().innerText();
    for (const want of [env("NODE_NAME"), "Online"]) {
      if (!text.includes(want)) throw new Error(`row ${JSON.stringify(text)} lacks ${want}`);
    }
  });
  await check("a tag with markup in it shows as text", async () => {
    const text = await nodeRow().innerText();
    if (!text.includes(env("NODE_TAGS"))) throw new Error(`row ${JSON.stringify(text)}`);
    if ((await nodeRow().locator("img").count()) !== 0) throw new Error("the tag became an element");
  });
  await check("the search filters the list", async () => {
    await page.getByLabel("Search").fill("no-such-node-anywhere");
    await page.getByRole("status").filter({ hasText: /^0 of / }).waitFor({ timeout });
    await page.getByLabel("Search").fill(env("NODE_NAME"));
    await nodeRow().waitFor({ timeout });
  });
  await check("the tag filter keeps the nodes with that tag", async () => {
    await page.getByLabel("Search").fill("");
    await page.getByLabel("Tag", { exact: true }).fill("calc=nope");
    await page.getByLabel("Tag", { exact: true }).press("Enter");
    await page.getByRole("status").filter({ hasText: /^0 of 0 nodes$/ }).waitFor({ timeout });
    // A value with "=" in it: the first "=" ends the key.
    await page.getByLabel("Tag", { exact: true }).fill("calc==1+1;=2");
    await page.getByLabel("Tag", { exact: true }).press("Enter");
    await page.getByRole("status").filter({ hasText: /^1 of 1 nodes$/ }).waitFor({ timeout });
    await nodeRow().waitFor({ timeout });
    await page.getByLabel("Tag", { exact: true }).fill("");
    await page.getByLabel("Tag", { exact: true }).press("Enter");
  });
  await check("the CSV report downloads with the node's row", async () => {
    const [download] = await Promise.all([
      page.waitForEvent("download", { timeout }),
      page.getByRole("button", { name: "Download report" }).click(),
    ]);
    const path = join(env("DOWNLOADS"), download.suggestedFilename());
    await download.saveAs(path);
    const lines = readFileSync(path, "utf8").trim().split("\r\n");
    if (!lines[0]?.startsWith('"Node ID","Name","Ping status",')) throw new Error(`header ${lines[0]}`);
    const row = lines.find((l) => l.startsWith(`"${env("NODE_ID")}",`));
    // Every cell quoted: a tag value with ";" and "=" stays one cell in any spreadsheet.
    for (const want of [`"${env("NODE_NAME")}"`, `"Online"`, `"${env("NODE_TAGS")}"`]) {
      if (!row?.includes(want)) throw new Error(`no ${want} in the node's row of ${JSON.stringify(lines)}`);
    }
  });
  await check("a reload keeps the session (the cookie)", async () => {
    await page.reload({ timeout });
    await nodeRow().waitFor({ timeout });
  });
  await check("sign out returns to the login page", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor({ timeout });
    await page.reload({ timeout });
    await page.getByRole("button", { name: "Sign in" }).waitFor({ timeout });
  });
  await check("no script errors and nothing the page's policy blocked", async () => {
    if (problems.length) throw new Error(problems.join(" | "));
  });
} finally {
  await browser.close();
}
process.exit(failed() ? 1 : 0);
