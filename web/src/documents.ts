// Documents: the list, one document's versions and content, and an editor that creates a
// document or adds a version, showing the server's refusal at the line it names.

import { api, ApiError, type DocumentView } from "./api";
import { el, show, thead } from "./dom";

export async function documentsPage(main: HTMLElement, canCreate: boolean): Promise<void> {
  const list = await api<{ documents: DocumentView[] }>("GET", "/api/v1/documents");
  main.replaceChildren(
    el("div", { class: "row" }, el("h1", {}, "Documents"), ...(canCreate ? [el("a", { class: "button", href: "#/documents/new", id: "new-document" }, "New document")] : [])),
    el(
      "div",
      { class: "scroll" },
      el(
        "table",
        { id: "documents", "aria-label": "Documents" },
        thead("Name", "Kind", "Default version", "Latest", "Description"),
        el(
          "tbody",
          {},
          ...list.documents.map((d) =>
            el(
              "tr",
              { "data-document": d.name },
              el("td", {}, el("a", { href: `#/documents/${encodeURIComponent(d.name)}` }, d.name)),
              el("td", {}, d.builtin ? "built-in" : "stored"),
              el("td", {}, String(d.version)),
              el("td", {}, String(d.latest_version)),
              el("td", {}, d.description),
            ),
          ),
        ),
      ),
    ),
  );
}

/// `name` is a document's name, or `new`.
export async function documentPage(main: HTMLElement, name: string, version: string): Promise<void> {
  const creating = name === "new";
  const doc = creating ? undefined : await api<DocumentView>("GET", `/api/v1/documents/${encodeURIComponent(name)}${version ? `?version=${encodeURIComponent(version)}` : ""}`);
  const nameInput = el("input", { id: "document-name", required: "", pattern: "[A-Za-z0-9_.\\-]{3,128}" });
  const editor = el("textarea", { id: "document-content", rows: "24", spellcheck: "false", "aria-describedby": "document-error" });
  editor.value = doc?.content ?? 'schemaVersion: "2.2"\ndescription: What this document does.\nparameters: {}\nmainSteps:\n  - action: aws:runShellScript\n    name: run\n    inputs:\n      runCommand:\n        - echo hello\n';
  const gutter = el("pre", { class: "gutter", "aria-hidden": "true" });
  const error = el("p", { class: "error", role: "alert", id: "document-error" });
  const save = el("button", { type: "submit" }, creating ? "Create" : "Save as a new version");
  const versions = el("div", { class: "row" });
  // Line numbers beside the text; the line a refusal names is marked.
  let bad = 0;
  const numbers = () => {
    const n = editor.value.split("\n").length;
    gutter.textContent = Array.from({ length: n }, (_, i) => (i + 1 === bad ? `▶ ${i + 1}` : String(i + 1))).join("\n");
    gutter.scrollTop = editor.scrollTop;
  };
  editor.addEventListener("input", numbers);
  editor.addEventListener("scroll", () => {
    gutter.scrollTop = editor.scrollTop;
  });
  const form = el(
    "form",
    { class: "stack" },
    el("h1", {}, creating ? "New document" : `${doc!.name} ${doc!.builtin ? "(built-in)" : ""}`),
    ...(creating ? [el("label", { for: "document-name" }, "Name"), nameInput] : [versions, el("p", { class: "muted" }, doc!.description)]),
    el("label", { for: "document-content" }, "Content (YAML or JSON)"),
    el("div", { class: "editor" }, gutter, editor),
    error,
    ...(doc?.builtin ? [] : [save]),
  );
  main.replaceChildren(form);
  if (doc) {
    editor.readOnly = doc.builtin;
    versions.append(
      "Version: ",
      ...Array.from({ length: doc.latest_version }, (_, i) => {
        const v = doc.latest_version - i;
        return el("a", { href: `#/documents/${encodeURIComponent(doc.name)}/${v}`, "aria-current": v === doc.version ? "page" : "false" }, v === doc.version ? `[${v}]` : String(v));
      }),
    );
  }
  numbers();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    bad = 0;
    const request = creating
      ? api<DocumentView>("POST", "/api/v1/documents", { name: nameInput.value.trim(), content: editor.value })
      : api<DocumentView>("PUT", `/api/v1/documents/${encodeURIComponent(name)}`, { content: editor.value });
    request
      .then((d) => {
        location.hash = `#/documents/${encodeURIComponent(d.name)}/${d.version}`;
      })
      .catch((e: unknown) => {
        show(error)(e);
        // "line L, column C: ..." puts the caret there.
        const at = e instanceof ApiError ? /line (\d+)(?:, column (\d+))?/.exec(e.message) : null;
        if (at) {
          bad = Number(at[1]);
          const lines = editor.value.split("\n");
          const offset = lines.slice(0, bad - 1).reduce((s, l) => s + l.length + 1, 0) + Math.max(0, Number(at[2] ?? 1) - 1);
          editor.focus();
          editor.setSelectionRange(offset, offset);
          numbers();
        }
      });
  });
}
