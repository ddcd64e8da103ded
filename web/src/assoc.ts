// State Manager: the associations (document, targets, schedule, next run), compliance by
// association (compliant, non-compliant, pending) and by node, and "Apply now" for those who
// may manage associations.

import { api } from "./api";
import { el, show, thead } from "./dom";

interface Association {
  id: string;
  name: string;
  document: string;
  document_version: string;
  targets: string[];
  schedule: string;
  compliance_severity: string;
  owner: string;
  next_run_at?: string;
}

interface SummaryRow {
  association_id: string;
  association_name: string;
  severity: string;
  compliant: number;
  non_compliant: number;
  pending: number;
}

interface Compliance {
  association_name: string;
  node_id: string;
  node_name: string;
  status: string;
  reason: string;
  at: string;
}

/// How often the page reads the associations and their compliance again while shown.
const REFRESH_MS = 5000;

export async function associationsPage(main: HTMLElement, canManage: boolean, alive: () => boolean): Promise<void> {
  const error = el("p", { class: "error", role: "alert" });
  const detail = el("section", { id: "compliance" });
  const body = el("tbody", {});
  main.replaceChildren(
    el("h1", {}, "Associations and compliance"),
    error,
    el(
      "div",
      { class: "scroll" },
      el(
        "table",
        { id: "associations", "aria-label": "Associations" },
        thead("Association", "Document", "Targets", "Schedule", "Next run", "Compliance", "Severity", "Owner", ""),
        body,
      ),
    ),
    detail,
  );
  while (alive()) {
    await rows(body, detail, error, canManage).catch(show(error));
    await new Promise((r) => setTimeout(r, REFRESH_MS));
  }
}

async function rows(body: HTMLElement, detail: HTMLElement, error: HTMLElement, canManage: boolean): Promise<void> {
  const [list, summary] = await Promise.all([
    api<{ associations: Association[] }>("GET", "/api/v1/associations"),
    api<{ associations: SummaryRow[] }>("GET", "/api/v1/compliance/summary"),
  ]);
  const counts = new Map(summary.associations.map((s) => [s.association_id, s]));
  body.replaceChildren(
    ...list.associations.map((a) => {
      const c = counts.get(a.id);
      const open = el("button", { type: "button", class: "link" }, "Nodes");
      open.addEventListener("click", () => void nodes(detail, a).catch(show(error)));
      const actions = el("td", {}, open);
      if (canManage) {
        const now = el("button", { type: "button" }, "Apply now");
        now.addEventListener("click", () => {
          now.disabled = true;
          api<{ command_id: string }>("POST", `/api/v1/associations/${encodeURIComponent(a.id)}/run`)
            .then((e) => {
              location.hash = `#/commands/${e.command_id}`;
            })
            .catch((e: unknown) => {
              now.disabled = false;
              show(error)(e);
            });
        });
        actions.append(" ", now);
      }
      return el(
        "tr",
        { "data-association": a.id },
        el("td", {}, a.name || a.id),
        el("td", {}, `${a.document} ${a.document_version}`),
        el("td", {}, a.targets.join(", ")),
        el("td", {}, a.schedule || "once"),
        el("td", {}, a.next_run_at ?? ""),
        el("td", {}, c ? `${c.compliant} compliant, ${c.non_compliant} non-compliant, ${c.pending} pending` : ""),
        el("td", {}, a.compliance_severity),
        el("td", {}, a.owner),
        actions,
      );
    }),
  );
}

async function nodes(detail: HTMLElement, a: Association): Promise<void> {
  const list = await api<{ items: Compliance[] }>("GET", `/api/v1/compliance?association=${encodeURIComponent(a.id)}`);
  detail.replaceChildren(
    el("h2", {}, `Compliance of ${a.name || a.id}`),
    el(
      "div",
      { class: "scroll" },
      el(
        "table",
        { id: "compliance-nodes", "aria-label": "Compliance by node" },
        thead("Node", "Status", "Reason", "At"),
        el(
          "tbody",
          {},
          ...list.items.map((c) =>
            el(
              "tr",
              { "data-node": c.node_id },
              el("td", {}, el("a", { href: `#/nodes/${encodeURIComponent(c.node_id)}` }, c.node_name || c.node_id)),
              el("td", {}, el("span", { class: `status ${c.status.toLowerCase()}` }, c.status)),
              el("td", {}, c.reason),
              el("td", {}, c.at),
            ),
          ),
        ),
      ),
    ),
  );
}
