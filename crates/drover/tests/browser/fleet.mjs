// The console's work pages in a real browser: a node's processes (listed, one killed) and
// files, a terminal (typed into, resized), a command run on two nodes, a session replayed, and
// a user without rights who is not offered Run Command and is refused by the API anyway. Each
// main page is saved as a screenshot. One line per check, as console.mjs.
//
// Environment: CONSOLE_URL, CHROMIUM, ADMIN_USER, ADMIN_PASSWORD, VIEWER_USER,
// VIEWER_PASSWORD, NODE_A (ID), NODE_A_NAME, NODE_B, NODE_B_NAME, PROC_MARK (a unique part
// of the command line of a process the test started on node A), FILE_DIR, FILE_NAME,
// FILE_TEXT (a file the test wrote), SCREENSHOTS (a directory), LOG_FILE (optional: a file
// under /var/log with a "keep-this line" and a "drop-this line").

import { join } from "node:path";
import { checker, env, launch, login, relay, timeout, watch } from "./lib.mjs";

// The operator's page goes through a relay the test can cut, to see the terminal resume.
const direct = env("CONSOLE_URL");
const via = await relay(direct);
const url = via.url;
const browser = await launch();
const { check, failed } = checker();
const slow = { timeout: 60_000 };

try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: url });
  const page = await context.newPage();
  const problems = [];
  // The bad document the check sends is refused with a 400, and the stream without its token
  // with a 403: expected.
  watch(page, problems, /status of 401|status of 400 .*\/api\/v1\/documents\)$|WebSocket connection to .*\/stream' failed/);
  // Every form control on the pages visited has a name a screen reader reads (a label,
  // aria-label or aria-labelledby): collected at each screenshot, checked at the end.
  const unlabeled = new Set();
  const shot = async (name) => {
    const found = await page.evaluate(() =>
      [...document.querySelectorAll("main input, main select, main textarea, main button")]
        .filter((e) => !e.closest(".xterm, .ap-player") && !(e.labels?.length || e.getAttribute("aria-label") || e.getAttribute("aria-labelledby") || (e.tagName === "BUTTON" && e.textContent.trim())))
        .map((e) => `${e.tagName.toLowerCase()}#${e.id || "?"}`),
    );
    for (const f of found) unlabeled.add(`${name}: ${f}`);
    await page.screenshot({ path: join(env("SCREENSHOTS"), `${name}.png`), fullPage: true });
  };
  const nodeA = env("NODE_A");

  // A user who may only read.
  const viewerContext = await browser.newContext({ ignoreHTTPSErrors: true });
  const viewer = await viewerContext.newPage();
  const viewerProblems = [];
  // The refusal the check provokes is expected in the console's log.
  watch(viewer, viewerProblems, /status of (401|403|404)/);
  await viewer.goto(url, { timeout });
  await login(viewer, env("VIEWER_USER"), env("VIEWER_PASSWORD"));
  const viewerAsks = async () => {
    await viewer.goto(`${url}/#/access`, { timeout });
    await viewer.locator("#access-targets").fill(nodeA, { timeout });
    await viewer.locator("#access-reason").fill("console test reason");
    await viewer.getByRole("button", { name: "Ask for access" }).click();
    await viewer.locator("#access-requests tr", { hasText: "console test reason" }).filter({ hasText: "Pending" }).waitFor({ timeout });
  };

  await page.goto(url, { timeout });
  await check("log in as an operator", async () => {
    await login(page, env("ADMIN_USER"), env("ADMIN_PASSWORD"));
    for (const id of [nodeA, env("NODE_B")]) await page.locator(`tr[data-node="${id}"]`).waitFor({ timeout });
    await shot("nodes");
  });

  await check("the node page shows the inventory and the actions", async () => {
    await page.getByRole("link", { name: env("NODE_A_NAME"), exact: true }).click();
    await page.getByRole("heading", { name: env("NODE_A_NAME") }).waitFor({ timeout });
    await page.locator("#connect").waitFor({ timeout });
    await page.locator("#run-on-node").waitFor({ timeout });
    await page.locator("#forward-line").filter({ hasText: `drover forward ${nodeA}` }).waitFor({ timeout });
    await shot("node");
  });

  await check("the processes tab lists the test's process and kills it", async () => {
    await page.getByRole("link", { name: "Processes" }).click();
    const row = page.locator("#processes tr", { hasText: env("PROC_MARK") });
    await row.waitFor(slow);
    await shot("node-processes");
    const pid = await row.getAttribute("data-pid");
    await row.getByRole("button", { name: "Kill" }).click();
    await row.getByRole("button", { name: `Confirm kill ${pid}` }).click();
    // The list is read again after the kill: the process is gone from it.
    await page.locator(`#processes tr[data-pid="${pid}"]`).waitFor({ state: "detached", ...slow });
    await page.locator("#processes-status").filter({ hasText: / processes$/ }).waitFor(slow);
  });

  await check("the file tab shows a file the test wrote", async () => {
    await page.getByRole("link", { name: "Files" }).click();
    await page.locator("#files tr").first().waitFor(slow);
    await page.getByLabel("Path").fill(env("FILE_DIR"));
    await page.getByRole("button", { name: "Open" }).click();
    await page.locator(`#files tr[data-name="${env("FILE_NAME")}"] button`).click(slow);
    await page.locator("#file-content").filter({ hasText: env("FILE_TEXT") }).waitFor(slow);
    await shot("node-files");
  });

  if (process.env.LOG_FILE) {
    await check("the logs tab tails a file under /var/log, filtered", async () => {
      await page.getByRole("link", { name: "Logs" }).click();
      await page.getByLabel(/^Source/).fill(process.env.LOG_FILE);
      await page.getByLabel("Containing").fill("keep-this");
      await page.getByRole("button", { name: "Show" }).click();
      const out = page.locator("#log-output");
      await out.filter({ hasText: "keep-this line" }).waitFor(slow);
      if ((await out.innerText()).includes("drop-this")) throw new Error("the filter let a line through");
      await shot("node-logs");
    });
  }

  await check("the performance tab draws its charts", async () => {
    await page.getByRole("link", { name: "Performance" }).click();
    // Rates need two snapshots: the CPU chart says a figure once the second one is in.
    await page.getByRole("img", { name: /^CPU: \d/ }).waitFor(slow);
    await shot("node-performance");
  });

  await check("Connect opens a terminal that runs what is typed", async () => {
    await page.goto(`${url}/#/nodes/${nodeA}`, { timeout });
    await page.locator("#connect").click();
    await page.locator("#terminal[data-session]").waitFor(slow);
    await page.locator("#terminal .xterm-helper-textarea").focus();
    await page.keyboard.type("echo hello-$((6*7))-console\n");
    await page.locator("#terminal .xterm-rows").filter({ hasText: "hello-42-console" }).waitFor(slow);
    await shot("terminal");
  });

  await check("a resize of the terminal reaches the PTY", async () => {
    const box = page.locator("#terminal");
    const before = await box.getAttribute("data-cols");
    await page.setViewportSize({ width: 900, height: 700 });
    await page.waitForFunction((b) => document.getElementById("terminal")?.dataset.cols !== b, before, slow);
    const cols = await box.getAttribute("data-cols");
    const rows = await box.getAttribute("data-rows");
    await page.keyboard.type("echo size-$(stty size | tr ' ' x)\n");
    await page.locator("#terminal .xterm-rows").filter({ hasText: `size-${rows}x${cols}` }).waitFor(slow);
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await check("paste (Ctrl+Shift+V) types the clipboard; copy (Ctrl+Shift+C) takes the selection", async () => {
    await page.evaluate(() => navigator.clipboard.writeText("echo pasted-$((4*4))-text"));
    await page.keyboard.press("Control+Shift+V");
    // The shell takes a paste as text (bracketed paste), not as keys: Enter runs it.
    await page.locator("#terminal .xterm-rows").filter({ hasText: "echo pasted-$((4*4))-text" }).waitFor(slow);
    await page.keyboard.press("Enter");
    // The output line, not the command line (which has "echo" and the arithmetic).
    const out = page.locator("#terminal .xterm-rows > div").filter({ hasText: "pasted-16-text" }).filter({ hasNotText: "echo" });
    await out.waitFor({ timeout }).catch(async (e) => {
      const rows = await page.locator("#terminal .xterm-rows > div").allInnerTexts();
      throw new Error(`${e.message.split("\n")[0]}; the terminal shows ${JSON.stringify(rows.filter((r) => r.trim()))}`);
    });
    // A double click on the line's first characters selects that word, as in any terminal.
    // (The mouse, at the row's place: xterm's own layers lie over its rows.)
    const at = await out.boundingBox();
    if (!at) throw new Error("the output line has no box");
    await page.mouse.dblclick(at.x + 12, at.y + at.height / 2);
    await page.keyboard.press("Control+Shift+C");
    await page.waitForFunction(async () => (await navigator.clipboard.readText()) === "pasted-16-text", null, slow);
  });

  await check("a lost connection resumes the terminal: what was typed meanwhile runs once", async () => {
    const sockets = [];
    page.on("websocket", (ws) => sockets.push(ws));
    via.drop();
    // Typed while the connection is down: kept, and sent again once the terminal is back.
    await page.keyboard.type("echo resumed-$((2+3))-once\n");
    await page.locator("#terminal .xterm-rows").filter({ hasText: "resumed-5-once" }).waitFor(slow);
    if (sockets.length < 1) throw new Error("the terminal did not attach again");
    // Once: the output line (not the echoed command line) is on the screen once.
    const lines = await page.locator("#terminal .xterm-rows > div").allInnerTexts();
    const n = lines.filter((l) => l.trim() === "resumed-5-once").length;
    if (n !== 1) throw new Error(`the output is there ${n} times: ${JSON.stringify(lines.filter((l) => l.trim()))}`);
  });

  await check("ending the terminal's shell ends its session", async () => {
    await page.keyboard.type("exit 3\n");
    await page.locator("#terminal-status").filter({ hasText: "exit 3" }).waitFor(slow);
  });

  await check("a finished session replays in the page", async () => {
    const id = await page.locator("#terminal").getAttribute("data-session");
    await page.getByRole("link", { name: "Sessions" }).click();
    const row = page.locator(`#sessions tr[data-session="${id}"]`);
    await row.waitFor({ timeout });
    await shot("sessions");
    await row.getByRole("link", { name: "Replay" }).click();
    // The player draws the recorded terminal: what was typed and printed is in it.
    await page.locator("#replay").filter({ hasText: "hello-42-console" }).waitFor(slow);
    await shot("replay");
  });

  await check("a command run on two nodes reaches Success with its output", async () => {
    await page.getByRole("link", { name: "Run Command" }).click();
    await page.getByLabel("commands (required)").fill("echo run-$((6*7))");
    for (const name of [env("NODE_A_NAME"), env("NODE_B_NAME")]) await page.getByLabel(name).check(slow);
    await page.locator("#run-preview").filter({ hasText: "2 nodes chosen" }).waitFor({ timeout });
    await shot("run");
    await page.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator("#command-status").filter({ hasText: /^Success/ }).waitFor(slow);
    await page.locator("#folded").filter({ hasText: "2 nodes: Success (exit 0)" }).waitFor(slow);
    await page.locator("#folded pre").filter({ hasText: "run-42" }).waitFor({ timeout });
    for (const id of [nodeA, env("NODE_B")]) await page.locator(`#invocations tr[data-node="${id}"]`, { hasText: "Success" }).waitFor({ timeout });
    await shot("command");
  });

  await check("a parameter that breaks the document's rules is named before sending", async () => {
    await page.goto(`${url}/#/run`, { timeout });
    await page.getByLabel("commands (required)").fill("true");
    await page.getByLabel("executionTimeout").fill("0");
    await page.getByLabel(env("NODE_A_NAME")).check(slow);
    await page.getByRole("button", { name: "Run", exact: true }).click();
    await page.locator("#run-error").filter({ hasText: "parameter executionTimeout" }).waitFor({ timeout });
  });

  await check("the command history lists the commands", async () => {
    await page.getByRole("link", { name: "Command history" }).click();
    await page.locator("#commands tbody tr").first().waitFor({ timeout });
    await shot("commands");
  });

  await check("a document with a mistake is refused at its line; a good one is stored", async () => {
    await page.getByRole("link", { name: "Documents" }).click();
    await page.locator("#documents tr[data-document=RunShellScript]").waitFor({ timeout });
    await shot("documents");
    await page.getByRole("link", { name: "New document" }).click();
    await page.getByLabel("Name").fill("Console-Check");
    const good = await page.locator("#document-content").inputValue();
    await page.locator("#document-content").fill(good.replace("aws:runShellScript", "aws:noSuchPlugin"));
    await page.getByRole("button", { name: "Create" }).click();
    await page.locator("#document-error").filter({ hasText: /line \d+/ }).waitFor({ timeout });
    await page.locator(".gutter").filter({ hasText: "▶" }).waitFor({ timeout });
    await shot("document-error");
    await page.locator("#document-content").fill(good);
    await page.getByRole("button", { name: "Create" }).click();
    await page.waitForURL(/#\/documents\/Console-Check\/1$/, { timeout });
  });

  await check("the association's page shows its compliance on both nodes", async () => {
    await page.getByRole("link", { name: "Associations" }).click();
    const row = page.locator("#associations tr", { hasText: "console-baseline" });
    await row.filter({ hasText: "2 compliant" }).waitFor(slow);
    await row.getByRole("button", { name: "Nodes" }).click();
    for (const id of [nodeA, env("NODE_B")]) await page.locator(`#compliance-nodes tr[data-node="${id}"]`, { hasText: "Compliant" }).waitFor({ timeout });
    await shot("associations");
  });

  await check("a user asks for access and an operator approves it", async () => {
    await viewerAsks();
    await page.getByRole("link", { name: "Access requests" }).click();
    const row = page.locator("#access-requests tr", { hasText: "console test reason" });
    await row.getByRole("button", { name: "Approve" }).click(slow);
    await row.filter({ hasText: "Approved" }).waitFor({ timeout });
    await shot("access-requests");
  });

  await check("the audit log lists what was done and its chain verifies", async () => {
    await page.getByRole("link", { name: "Audit log" }).click();
    await page.locator("#audit tbody tr").first().waitFor({ timeout });
    await page.getByRole("button", { name: "Verify the chain" }).click();
    await page.locator("#audit-verdict").filter({ hasText: "The chain is intact" }).waitFor(slow);
    await shot("audit");
  });

  await check("users and policies, with the policy check", async () => {
    await page.getByRole("link", { name: "Users and policies" }).click();
    await page.locator("#users tr", { hasText: env("VIEWER_USER") }).waitFor({ timeout });
    await page.getByLabel("User", { exact: true }).fill(env("VIEWER_USER"));
    await page.getByLabel("Action").fill("SendCommand");
    await page.getByLabel("Node").fill(nodeA);
    await page.getByRole("button", { name: "Check" }).click();
    await page.locator("#check-answer").filter({ hasText: /^deny/ }).waitFor({ timeout });
    await shot("users");
  });

  await check("a session stream opened with the cookie alone is refused; with the CSRF token it opens", async () => {
    const result = await page.evaluate(async (node) => {
      const csrf = decodeURIComponent(document.cookie.split("; ").find((c) => c.startsWith("__Host-drover_csrf="))?.split("=")[1] ?? "");
      const post = (path, body) =>
        fetch(path, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body) }).then((r) => r.json());
      const s = await post("/api/v1/sessions", { node, command: "sleep 60" });
      const opens = (protocols) =>
        new Promise((resolve) => {
          const ws = new WebSocket(`wss://${location.host}${s.stream_path}`, protocols);
          ws.onopen = () => {
            ws.close();
            resolve(true);
          };
          ws.onerror = () => resolve(false);
        });
      const without = await opens(["drover.session.v1"]);
      const withToken = await opens(["drover.session.v1", `drover.csrf.${csrf}`]);
      await post(`/api/v1/sessions/${s.id}/terminate`, {});
      return { without, withToken };
    }, nodeA);
    if (result.without || !result.withToken) throw new Error(JSON.stringify(result));
  });

  await check("every form control has a label", async () => {
    if (unlabeled.size) throw new Error([...unlabeled].join(", "));
  });

  await check("the dark theme is dark", async () => {
    await page.emulateMedia({ colorScheme: "dark" });
    await page.goto(`${url}/#/nodes`, { timeout });
    await page.locator(`tr[data-node="${nodeA}"]`).waitFor({ timeout });
    const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const [r, g, b] = bg.match(/\d+/g).map(Number);
    if (r + g + b > 150) throw new Error(`background ${bg}`);
    await shot("nodes-dark");
    await page.emulateMedia({ colorScheme: "light" });
  });

  await check("no script errors and nothing the page's policy blocked (operator)", async () => {
    if (problems.length) throw new Error(problems.join(" | "));
  });

  await check("a user who may only read is not offered Run Command, and Connect only once granted", async () => {
    await viewer.goto(`${url}/#/nodes`, { timeout });
    await viewer.locator(`tr[data-node="${nodeA}"]`).waitFor({ timeout });
    await viewer.getByRole("link", { name: "Sessions" }).waitFor({ timeout });
    if (await viewer.getByRole("link", { name: "Run Command" }).count()) throw new Error("the nav offers Run Command");
    await viewer.goto(`${url}/#/nodes/${nodeA}`, { timeout });
    await viewer.getByRole("heading", { name: env("NODE_A_NAME") }).waitFor({ timeout });
    await viewer.getByRole("link", { name: "Overview" }).waitFor({ timeout });
    if (await viewer.locator("#run-on-node").count()) throw new Error("the node page offers Run command");
    if (await viewer.locator("#processes, #tab-processes button.danger").count()) throw new Error("a kill is offered");
    // Connect is what the approved request granted, on this node.
    await viewer.locator("#connect").waitFor({ timeout });
  });
  await check("nor New document, nor approving others' requests", async () => {
    await viewer.getByRole("link", { name: "Documents" }).click();
    await viewer.locator("#documents tr[data-document=RunShellScript]").waitFor({ timeout });
    if (await viewer.locator("#new-document").count()) throw new Error("New document is offered");
    await viewer.getByRole("link", { name: "Access requests" }).click();
    await viewer.locator("#access-requests").waitFor({ timeout });
    if (await viewer.getByRole("button", { name: /^(Approve|Deny)$/ }).count()) throw new Error("a verdict is offered");
    // Its own approved grant, it may give up.
    await viewer.locator("#access-requests tr", { hasText: "console test reason" }).getByRole("button", { name: "Revoke" }).waitFor({ timeout });
  });
  await check("and the API refuses that user's command anyway", async () => {
    const status = await viewer.evaluate(async (node) => {
      const csrf = document.cookie.split("; ").find((c) => c.startsWith("__Host-drover_csrf="))?.split("=")[1] ?? "";
      const r = await fetch("/api/v1/commands", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": decodeURIComponent(csrf) },
        body: JSON.stringify({ document: "RunShellScript", parameters: { commands: ["id"] }, targets: [node] }),
      });
      return r.status;
    }, nodeA);
    if (status !== 403) throw new Error(`status ${status}`);
  });
  await check("no script errors and nothing the page's policy blocked (viewer)", async () => {
    if (viewerProblems.length) throw new Error(viewerProblems.join(" | "));
  });
} finally {
  await browser.close();
  via.close();
}
process.exit(failed() ? 1 : 0);
