// The console's shell: who is signed in, the login page, and the pages by their #/ route.

// First: the Trusted Types policy must exist before any library writes markup.
import "./tt";
import "./style.css";
import { api, ApiError, mayOnAny, onSignedOut, type AuthMethods, type WhoAmI } from "./api";
import { accessPage, auditPage, usersPage } from "./admin";
import { associationsPage } from "./assoc";
import { commandPage, commandsPage } from "./command";
import { documentPage, documentsPage } from "./documents";
import { el } from "./dom";
import { nodePage } from "./nodepage";
import { nodesPage } from "./nodes";
import { runPage } from "./run";

const main = document.getElementById("main") as HTMLElement;
// Each navigation is a generation: a page's loops (a command's live view, the performance
// tab, a terminal) stop once another page is shown.
let generation = 0;
const who = document.getElementById("who") as HTMLElement;
const nav = document.getElementById("nav") as HTMLElement;
const logout = document.getElementById("logout") as HTMLButtonElement;

async function whoami(): Promise<WhoAmI | undefined> {
  try {
    return await api<WhoAmI>("GET", "/api/v1/auth/whoami");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return undefined;
    throw e;
  }
}

function loginPage(): void {
  // The page shown before stops its loops (a live view polling would sign out again).
  generation++;
  const user = el("input", { id: "login-user", name: "username", autocomplete: "username", required: "" });
  const password = el("input", {
    id: "login-password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: "",
  });
  const error = el("p", { id: "login-error", class: "error", role: "alert" });
  const form = el(
    "form",
    { class: "login", "aria-labelledby": "login-title" },
    el("h1", { id: "login-title" }, "Sign in to Drover"),
    el("label", { for: "login-user" }, "User"),
    user,
    el("label", { for: "login-password" }, "Password"),
    password,
    el("button", { type: "submit" }, "Sign in"),
    error,
  );
  // The provider's button, where the server has one.
  api<AuthMethods>("GET", "/api/v1/auth/methods")
    .then((m) => {
      if (m.oidc) {
        form.append(el("a", { href: "/api/v1/auth/oidc/console", id: "login-oidc", class: "button" }, `Sign in with ${m.oidc.name}`));
      }
    })
    .catch(() => undefined);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    api("POST", "/api/v1/auth/login", { user: user.value, password: password.value, console: true })
      .then(() => route())
      .catch((e: unknown) => {
        error.textContent = e instanceof Error ? e.message : String(e);
        password.value = "";
        password.focus();
      });
  });
  nav.hidden = true;
  logout.hidden = true;
  who.textContent = "";
  main.replaceChildren(form);
  user.focus();
}


async function route(): Promise<void> {
  // Counted and given a container of its own before anything is awaited: a slower, older
  // navigation then renders into a container no longer shown, never over this one.
  const mine = ++generation;
  const alive = () => mine === generation;
  const view = el("div", { class: "page" });
  main.replaceChildren(view);
  try {
    await render(view, alive);
  } catch (e) {
    // Only the page still shown says what went wrong.
    if (alive()) view.replaceChildren(el("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e)));
  }
}

async function render(view: HTMLElement, alive: () => boolean): Promise<void> {
  const me = await whoami();
  if (!alive()) return;
  if (!me) return loginPage();
  who.textContent = me.user.name;
  nav.hidden = false;
  logout.hidden = false;
  // What the user may not do is not offered (and the server refuses it anyway).
  const canRun = await mayOnAny("SendCommand").catch(() => false);
  if (!alive()) return;
  const can = (a: string) => me.server_actions.includes(a);
  nav.replaceChildren(
    el("a", { href: "#/nodes" }, "Nodes"),
    ...(canRun ? [el("a", { href: "#/run", id: "nav-run" }, "Run Command")] : []),
    el("a", { href: "#/commands" }, "Command history"),
    el("a", { href: "#/sessions" }, "Sessions"),
    el("a", { href: "#/documents" }, "Documents"),
    ...(can("ReadAssociations") ? [el("a", { href: "#/associations" }, "Associations")] : []),
    el("a", { href: "#/access" }, "Access requests"),
    ...(can("ReadAudit") ? [el("a", { href: "#/audit" }, "Audit log")] : []),
    ...(can("ReadUsers") ? [el("a", { href: "#/users" }, "Users and policies")] : []),
  );
  const [page = "nodes", id = "", sub = ""] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  for (const a of nav.querySelectorAll("a")) a.setAttribute("aria-current", a.getAttribute("href") === `#/${page}` ? "page" : "false");
  // Keyboard users start on the new page (the terminal takes the focus for itself).
  if (page !== "terminal") main.focus();
  switch (page) {
    case "run":
      await runPage(view, alive, id || undefined);
      break;
    case "commands":
      await (id ? commandPage(view, id, alive) : commandsPage(view));
      break;
    case "sessions":
      // The terminal and the player are big: loaded when first used.
      await (id ? (await import("./replay")).replayPage(view, id) : (await import("./sessions")).sessionsPage(view));
      break;
    case "documents":
      await (id ? documentPage(view, id, sub) : documentsPage(view, me.document_actions.includes("CreateDocument")));
      break;
    case "associations":
      await associationsPage(view, can("ManageAssociations"), alive);
      break;
    case "access":
      await accessPage(view, me.user.name, await mayOnAny("ApproveAccess").catch(() => false));
      break;
    case "audit":
      await auditPage(view);
      break;
    case "users":
      await usersPage(view, can("ReadPolicies"));
      break;
    case "terminal":
      await (await import("./terminal")).terminalPage(view, id, alive);
      break;
    case "nodes":
      if (id) {
        await nodePage(view, id, sub, alive);
        break;
      }
      await nodesPage(view);
      break;
    default:
      await nodesPage(view);
  }
}

logout.addEventListener("click", () => {
  // Signed out either way: a session the server no longer knows is as good as ended.
  api("POST", "/api/v1/auth/logout")
    .catch(() => undefined)
    .finally(() => loginPage());
});
onSignedOut(loginPage);
window.addEventListener("hashchange", () => void route());
void route();
