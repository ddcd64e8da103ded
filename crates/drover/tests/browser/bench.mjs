// The console's node table over a big fleet, in headless chromium: `cargo xtask bench console`
// runs it. Prints `RESULT name=value unit=ms` lines.
//
// Environment: CONSOLE_URL, CONSOLE_USER, CONSOLE_PASSWORD, CHROMIUM, NODES (how many nodes
// the fleet has).

import { env, launch, login, timeout } from "./lib.mjs";

const url = env("CONSOLE_URL");
const nodes = Number(env("NODES"));
const browser = await launch();
const long = { timeout: 120_000 };
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1600, height: 900 } });
  const page = await context.newPage();
  await page.goto(url, { timeout });
  await login(page, env("CONSOLE_USER"), env("CONSOLE_PASSWORD"));

  // Opening the page afresh (the session cookie kept): until the first rows are drawn.
  const firstRows = [];
  for (let i = 0; i < 5; i++) {
    await page.goto("about:blank");
    const t0 = Date.now();
    await page.goto(`${url}/#/nodes`, { timeout });
    await page.locator("#nodes tr[data-node]").first().waitFor(long);
    firstRows.push(Date.now() - t0);
  }
  const count = await page.locator("#node-count").innerText();
  if (count !== `${nodes} of ${nodes} nodes`) throw new Error(`the table says ${JSON.stringify(count)}, not ${nodes} nodes`);

  // A screen at a time to the end: each screen counts once no row in view is still loading.
  const scroll = await page.evaluate(async (total) => {
    const box = document.getElementById("node-scroll");
    const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
    const settled = async () => {
      for (;;) {
        await frame();
        const top = box.getBoundingClientRect().top;
        const bottom = top + box.clientHeight;
        const loading = [...box.querySelectorAll("tr.loading")].some((r) => {
          const b = r.getBoundingClientRect();
          return b.bottom > top && b.top < bottom;
        });
        if (!loading) return;
      }
    };
    const screens = [];
    const t0 = performance.now();
    while (box.scrollTop + box.clientHeight < box.scrollHeight - 1) {
      const s0 = performance.now();
      box.scrollTop += box.clientHeight;
      await settled();
      screens.push(performance.now() - s0);
    }
    const all = performance.now() - t0;
    const last = box.querySelector(`tr[aria-rowindex="${total + 1}"]`) !== null;
    screens.sort((a, b) => a - b);
    return { all, screens: screens.length, median: screens[Math.floor(screens.length / 2)], worst: screens[screens.length - 1], last };
  }, nodes);
  if (!scroll.last) throw new Error("the last row was never drawn");

  // Sort by name, descending (one click: the table is sorted by name, ascending, already),
  // and search.
  const firstId = () => page.locator("#nodes tr[data-node]").first().getAttribute("data-node");
  await page.evaluate(() => (document.getElementById("node-scroll").scrollTop = 0));
  const before = await firstId();
  const s0 = Date.now();
  await page.getByRole("button", { name: "Name", exact: true }).click();
  await page.waitForFunction((b) => document.querySelector("#nodes tr[data-node]")?.getAttribute("data-node") !== b, before, long);
  const sort = Date.now() - s0;
  const q0 = Date.now();
  await page.getByLabel("Search").fill("node0042");
  await page.locator("#node-count").filter({ hasText: /^\d+ of / }).filter({ hasNotText: `${nodes} of` }).waitFor(long);
  const search = Date.now() - q0;

  firstRows.sort((a, b) => a - b);
  const r = (name, v, extra = "") => console.log(`RESULT console.${name}.n${nodes}=${Math.round(v)} unit=ms${extra}`);
  r("first_rows", firstRows[2], ` stat=median runs=5 all=${firstRows.join(",")}`);
  r("scroll_all", scroll.all, ` screens=${scroll.screens} screen_median_ms=${scroll.median.toFixed(0)} screen_worst_ms=${scroll.worst.toFixed(0)}`);
  r("sort", sort, " stat=once");
  r("search", search, " stat=once (includes the 150 ms pause the search box waits for)");
} finally {
  await browser.close();
}
