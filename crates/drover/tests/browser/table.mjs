// The node table over a fleet of more rows than one page (the table fetches pages as it
// scrolls and draws only the rows in view): the count, the last row, a row in the middle,
// sorting and searching, all answered by the server. One line per check, as console.mjs.
//
// Environment: CONSOLE_URL, CONSOLE_USER, CONSOLE_PASSWORD, CHROMIUM, NODES (how many), PREFIX
// (the nodes are named PREFIX0001, PREFIX0002, ...).

import { checker, env, launch, login, timeout, watch } from "./lib.mjs";

const url = env("CONSOLE_URL");
const n = Number(env("NODES"));
const name = (i) => `${env("PREFIX")}${String(i).padStart(4, "0")}`;
const browser = await launch();
const { check, failed } = checker();
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  watch(page, problems);
  await page.goto(url, { timeout });
  await login(page, env("CONSOLE_USER"), env("CONSOLE_PASSWORD"));
  const box = page.locator("#node-scroll");
  const row = (index) => page.locator(`#nodes tr[aria-rowindex="${index + 1}"]`);
  const scrollTo = (index) => box.evaluate((b, i) => (b.scrollTop = i * 33), index);

  await check("the count is the whole fleet's, and only a screenful of rows is drawn", async () => {
    await page.locator("#node-count").filter({ hasText: `${n} of ${n} nodes` }).waitFor({ timeout });
    const drawn = await page.locator("#nodes tr[data-node]").count();
    if (drawn >= n || drawn > 100) throw new Error(`${drawn} rows drawn`);
  });
  await check("the last row is reached by scrolling, past the first page", async () => {
    await box.evaluate((b) => (b.scrollTop = b.scrollHeight));
    await row(n).filter({ hasText: name(n) }).waitFor({ timeout });
  });
  await check("a row in the middle is where it should be", async () => {
    const mid = Math.floor(n * 0.6);
    await scrollTo(mid - 5);
    await row(mid).filter({ hasText: name(mid) }).waitFor({ timeout });
  });
  await check("sorting by name, descending, is the server's", async () => {
    await scrollTo(0);
    await page.getByRole("button", { name: "Name", exact: true }).click();
    await row(1).filter({ hasText: name(n) }).waitFor({ timeout });
    await box.evaluate((b) => (b.scrollTop = b.scrollHeight));
    await row(n).filter({ hasText: name(1) }).waitFor({ timeout });
  });
  await check("a search finds one node among them", async () => {
    const one = Math.floor(n / 3);
    await page.getByLabel("Search").fill(name(one));
    await page.locator("#node-count").filter({ hasText: `1 of ${n} nodes` }).waitFor({ timeout });
    await row(1).filter({ hasText: name(one) }).waitFor({ timeout });
  });
  await check("no script errors and nothing the page's policy blocked", async () => {
    if (problems.length) throw new Error(problems.join(" | "));
  });
} finally {
  await browser.close();
}
process.exit(failed() ? 1 : 0);
