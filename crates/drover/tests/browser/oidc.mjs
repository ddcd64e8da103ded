// Signing in to the console through an identity provider, in headless chromium: the login
// page's "Sign in with HOST", the provider's own form, and back to the console, signed in.
// One line per check, as console.mjs.
//
// Environment: CONSOLE_URL, CHROMIUM, IDP_HOST (the provider's host, as the button names it),
// IDP_USER (an account of the provider).

import { checker, env, launch, timeout, watch } from "./lib.mjs";

const url = env("CONSOLE_URL");
const browser = await launch();
const { check, failed } = checker();
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const problems = [];
  // The console's problems: the test provider's pages (plain http) ask for a favicon it lacks.
  watch(page, problems, /status of 401|\(http:\/\//);
  await page.goto(url, { timeout });
  await check("the login page offers the provider by its host", async () => {
    await page.getByRole("link", { name: `Sign in with ${env("IDP_HOST")}` }).click({ timeout });
  });
  await check("the provider's own form signs the user in", async () => {
    await page.locator("input[name=login]").fill(env("IDP_USER"), { timeout });
    await page.getByRole("button", { name: "Sign in" }).click();
  });
  await check("back at the console, signed in as that user", async () => {
    await page.getByRole("heading", { name: "Nodes" }).waitFor({ timeout });
    const who = await page.locator("#who").innerText();
    if (who !== env("IDP_USER")) throw new Error(`signed in as ${JSON.stringify(who)}`);
    if (!page.url().startsWith(url)) throw new Error(`at ${page.url()}`);
  });
  await check("no script errors and nothing the page's policy blocked", async () => {
    if (problems.length) throw new Error(problems.join(" | "));
  });
} finally {
  await browser.close();
}
process.exit(failed() ? 1 : 0);
