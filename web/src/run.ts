// Run Command: a form built from the document's parameters (checked here before sending, and
// again by the server), targets with a live count of what matches and what the user may reach,
// rate control and timeouts; then the command's page.

import { allNodes, api, type CommandView, type DocumentView, type SendCommand } from "./api";
import { el, label, show } from "./dom";
import { readParams, paramForm } from "./params";

export async function runPage(main: HTMLElement, alive: () => boolean, presetNode?: string): Promise<void> {
  const list = await api<{ documents: DocumentView[] }>("GET", "/api/v1/documents");
  const docSelect = el("select", { id: "run-document" }, ...list.documents.map((d) => el("option", { value: d.name }, d.name)));
  const versionSelect = el("select", { id: "run-version" });
  const description = el("p", { class: "muted", id: "run-description" });
  const params = el("fieldset", { id: "run-params" });
  const targetKind = el(
    "select",
    { id: "run-target-kind" },
    el("option", { value: "nodes" }, "Chosen nodes"),
    el("option", { value: "tags" }, "Nodes with tags"),
    el("option", { value: "all" }, "All nodes"),
  );
  const tagInput = el("input", { id: "run-tags", placeholder: "env=prod, role=web", hidden: "", "aria-label": "Tags (KEY=VALUE, comma-separated)" });
  const nodeList = el("div", { id: "run-nodes", class: "picklist", role: "group", "aria-label": "Nodes" });
  const preview = el("p", { id: "run-preview", role: "status" });
  const concurrency = el("input", { id: "run-concurrency", value: "50" });
  const maxErrors = el("input", { id: "run-max-errors", value: "0" });
  const delivery = el("input", { id: "run-delivery", type: "number", min: "1", value: "600" });
  const execution = el("input", { id: "run-execution", type: "number", min: "1", value: "3600" });
  const comment = el("input", { id: "run-comment", maxlength: "100" });
  const error = el("p", { class: "error", role: "alert", id: "run-error" });
  const send = el("button", { type: "submit" }, "Run");
  const form = el(
    "form",
    { class: "stack", "aria-labelledby": "run-title" },
    el("h1", { id: "run-title" }, "Run a command"),
    el("div", { class: "row" }, label("run-document", "Document"), docSelect, label("run-version", "Version"), versionSelect),
    description,
    params,
    el("h2", {}, "Targets"),
    el("div", { class: "row" }, label("run-target-kind", "Target"), targetKind, tagInput),
    nodeList,
    preview,
    el("h2", {}, "Rate control and timeouts"),
    el(
      "div",
      { class: "row" },
      label("run-concurrency", "Max concurrency"),
      concurrency,
      label("run-max-errors", "Max errors"),
      maxErrors,
      label("run-delivery", "Delivery timeout (s)"),
      delivery,
      label("run-execution", "Execution timeout (s)"),
      execution,
    ),
    el("div", { class: "row" }, label("run-comment", "Comment"), comment),
    send,
    error,
  );
  main.replaceChildren(form);

  let doc: DocumentView | undefined;
  const loadDoc = async (version?: string) => {
    const name = docSelect.value;
    const q = version ? `?version=${encodeURIComponent(version)}` : "";
    doc = await api<DocumentView>("GET", `/api/v1/documents/${encodeURIComponent(name)}${q}`);
    if (!version) {
      const versions = Array.from({ length: doc.latest_version }, (_, i) => String(doc!.latest_version - i));
      versionSelect.replaceChildren(...versions.map((v) => el("option", { value: v }, v === String(doc!.version) ? `${v} (default)` : v)));
      versionSelect.value = String(doc.version);
    }
    description.textContent = doc.description;
    if (!doc.parameters) {
      params.replaceChildren(el("p", { class: "error" }, `${name} is a session document: start it from a node's Connect button or the CLI.`));
      send.disabled = true;
    } else {
      params.replaceChildren(el("legend", {}, "Parameters"), ...paramForm(doc.parameters));
      send.disabled = false;
    }
    await refreshPreview();
  };

  // What the targets match, and how many of those this user may send this document to.
  let latest = 0;
  const targets = (): string[] => {
    switch (targetKind.value) {
      case "all":
        return ["all"];
      case "tags":
        return tagFilters(tagInput.value).map((t) => `tag:${t}`);
      default:
        return [...nodeList.querySelectorAll<HTMLInputElement>("input:checked")].map((c) => c.value);
    }
  };
  const refreshPreview = async () => {
    const mine = ++latest;
    const document = docSelect.value;
    tagInput.hidden = targetKind.value !== "tags";
    nodeList.hidden = targetKind.value !== "nodes";
    if (targetKind.value === "nodes") {
      const chosen = new Set(targets());
      const reachable = await allNodes([], { action: "SendCommand", document });
      if (mine !== latest) return;
      // Ticking a box only counts again: the list is read when the document changes.
      const counted = () => {
        const n = targets().length;
        preview.textContent = `${n} node${n === 1 ? "" : "s"} chosen of ${reachable.length} you may run ${document} on`;
      };
      nodeList.replaceChildren(
        ...reachable.map((n) => {
          const box = el("input", { type: "checkbox", value: n.id, id: `pick-${n.id}` });
          box.checked = chosen.has(n.id) || n.id === presetNode;
          box.addEventListener("change", counted);
          return el("label", { for: box.id, class: "pick" }, box, ` ${n.name} `, el("span", { class: `status ${n.status.toLowerCase()}` }, n.status));
        }),
      );
      presetNode = undefined;
      counted();
      return;
    }
    const filters = targetKind.value === "tags" ? tagFilters(tagInput.value).map((t) => `tag:${t}`) : [];
    if (targetKind.value === "tags" && !filters.length) {
      preview.textContent = "Give at least one tag as KEY=VALUE";
      return;
    }
    const [matching, reachable] = await Promise.all([allNodes(filters), allNodes(filters, { action: "SendCommand", document })]);
    if (mine !== latest) return;
    preview.textContent = `${matching.length} node${matching.length === 1 ? "" : "s"} match; you may run ${document} on ${reachable.length} of them`;
  };

  docSelect.addEventListener("change", () => void loadDoc().catch(show(error)));
  versionSelect.addEventListener("change", () => void loadDoc(versionSelect.value).catch(show(error)));
  targetKind.addEventListener("change", () => void refreshPreview().catch(show(preview)));
  // Counted once the typing pauses, not for every key.
  let typing: number | undefined;
  tagInput.addEventListener("input", () => {
    window.clearTimeout(typing);
    typing = window.setTimeout(() => void refreshPreview().catch(show(preview)), 250);
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    if (!doc?.parameters) return;
    const problems: string[] = [];
    const parameters = readParams(params, doc.parameters, problems);
    const chosen = targets();
    if (!chosen.length) problems.push("choose at least one target");
    if (problems.length) {
      error.textContent = problems.join("; ");
      return;
    }
    const req: SendCommand = {
      document: `${doc.name}:${versionSelect.value}`,
      parameters,
      targets: chosen,
      max_concurrency: concurrency.value.trim(),
      max_errors: maxErrors.value.trim(),
      delivery_timeout_secs: Number(delivery.value),
      execution_timeout_secs: Number(execution.value),
      comment: comment.value,
    };
    send.disabled = true;
    api<CommandView>("POST", "/api/v1/commands", req)
      .then((c) => {
        if (alive()) location.hash = `#/commands/${c.id}`;
      })
      .catch((e: unknown) => {
        show(error)(e);
        send.disabled = false;
      });
  });
  const first = list.documents.find((d) => d.name === "RunShellScript") ?? list.documents[0];
  if (first) {
    docSelect.value = first.name;
    await loadDoc();
  }
}

/// `env=prod, role=web` as `["env=prod", "role=web"]`.
function tagFilters(text: string): string[] {
  return text
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t.includes("="));
}
