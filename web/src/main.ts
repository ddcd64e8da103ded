// The console's shell: who is signed in, the login page, and the pages by their #/ route.

import "./style.css";
import { api, ApiError, onSignedOut, type AuthMethods, type WhoAmI } from "./api";
import { el } from "./dom";
import { nodesPage } from "./nodes";

const main = document.getElementById("main") as HTMLElement;
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
  const me = await whoami();
  if (!me) return loginPage();
  who.textContent = me.user.name;
  nav.hidden = false;
  logout.hidden = false;
  switch (location.hash) {
    case "":
    case "#/nodes":
    default:
      await nodesPage(main);
  }
  main.focus();
}

logout.addEventListener("click", () => {
  // Signed out either way: a session the server no longer knows is as good as ended.
  api("POST", "/api/v1/auth/logout")
    .catch(() => undefined)
    .finally(() => loginPage());
});
onSignedOut(loginPage);
window.addEventListener("hashchange", () => void route());
route().catch((e: unknown) => {
  main.replaceChildren(el("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e)));
});
