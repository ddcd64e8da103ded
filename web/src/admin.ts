// The control plane's own pages: the audit log (filterable, with the chain's check), access
// requests (ask, approve, deny, revoke), and users, groups and policies with the policy check.

import { api } from "./api";
import { el, label, show, thead } from "./dom";

function table(id: string, heads: string[], rows: HTMLTableRowElement[]): HTMLTableElement {
  return el(
    "table",
    { id, "aria-label": id },
    thead(...heads),
    el("tbody", {}, ...rows),
  );
}

const cells = (...values: (string | Node)[]) => el("tr", {}, ...values.map((v) => el("td", {}, v)));

interface AuditEntry {
  seq: number;
  time: string;
  actor: string;
  actor_kind: string;
  source: string;
  action: string;
  resource: string;
  outcome: string;
  reason: string;
}

export async function auditPage(main: HTMLElement): Promise<void> {
  const user = el("input", { id: "audit-user" });
  const action = el("input", { id: "audit-action", placeholder: "e.g. SendCommand" });
  const resource = el("input", { id: "audit-resource", placeholder: "e.g. node/n-…" });
  const since = el("input", { id: "audit-since", type: "datetime-local" });
  const verify = el("button", { type: "button" }, "Verify the chain");
  const verdict = el("p", { role: "status", id: "audit-verdict" });
  const error = el("p", { class: "error", role: "alert" });
  const list = el("div", { class: "scroll" });
  const more = el("button", { type: "button" }, "Later entries");
  const form = el(
    "form",
    { class: "filters" },
    label("audit-user", "User"),
    user,
    label("audit-action", "Action"),
    action,
    label("audit-resource", "Resource"),
    resource,
    label("audit-since", "Since"),
    since,
    el("button", { type: "submit" }, "Filter"),
    verify,
  );
  main.replaceChildren(el("h1", {}, "Audit log"), form, verdict, error, list, more);
  let after: number | undefined;
  let rows: HTMLTableRowElement[] = [];
  const load = async (fresh: boolean) => {
    if (fresh) {
      after = undefined;
      rows = [];
    }
    const q = new URLSearchParams({ limit: "200" });
    if (user.value.trim()) q.set("user", user.value.trim());
    if (action.value.trim()) q.set("action", action.value.trim());
    if (resource.value.trim()) q.set("resource", resource.value.trim());
    if (since.value) q.set("since", new Date(since.value).toISOString());
    if (after !== undefined) q.set("after", String(after));
    const page = await api<{ entries: AuditEntry[]; next_after?: number }>("GET", `/api/v1/audit?${q}`);
    after = page.next_after;
    more.hidden = after === undefined;
    rows.push(
      ...page.entries.map((e) =>
        cells(String(e.seq), e.time, `${e.actor} (${e.actor_kind})`, e.source, e.action, e.resource, el("span", { class: `outcome ${e.outcome}` }, e.outcome), e.reason),
      ),
    );
    list.replaceChildren(table("audit", ["#", "Time", "Actor", "Source", "Action", "Resource", "Outcome", "Reason"], rows));
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    void load(true).catch(show(error));
  });
  more.addEventListener("click", () => void load(false).catch(show(error)));
  verify.addEventListener("click", () => {
    verdict.textContent = "Checking…";
    api<{ ok: boolean; checked: number; checkpoints: number; problem?: string; first_bad?: number }>("GET", "/api/v1/audit/verify")
      .then((v) => {
        verdict.textContent = v.ok
          ? `The chain is intact: ${v.checked} entries and ${v.checkpoints} signed checkpoints checked.`
          : `The chain is broken at entry ${v.first_bad ?? "?"}: ${v.problem ?? "see drover audit verify"}`;
      })
      .catch(show(verdict));
  });
  await load(true);
}

interface AccessRequest {
  id: string;
  requester: string;
  actions: string[];
  nodes: string[];
  document?: string;
  reason: string;
  duration_secs: number;
  created_at: string;
  status: string;
  approvals_needed: number;
  expires_at?: string;
}

export async function accessPage(main: HTMLElement, me: string, canApprove: boolean): Promise<void> {
  const targets = el("input", { id: "access-targets", placeholder: "node ID, name, or tag:KEY=VALUE" });
  const actions = el("input", { id: "access-actions", value: "StartSession" });
  const reason = el("input", { id: "access-reason", required: "" });
  const minutes = el("input", { id: "access-minutes", type: "number", min: "1", value: "60" });
  const error = el("p", { class: "error", role: "alert" });
  const list = el("div", { class: "scroll" });
  const ask = el(
    "form",
    { class: "row" },
    label("access-targets", "Nodes"),
    targets,
    label("access-actions", "Actions"),
    actions,
    label("access-reason", "Reason"),
    reason,
    label("access-minutes", "For (minutes)"),
    minutes,
    el("button", { type: "submit" }, "Ask for access"),
  );
  main.replaceChildren(el("h1", {}, "Access requests"), ask, error, list);
  const load = async () => {
    const requests = await api<AccessRequest[]>("GET", "/api/v1/access-requests?limit=200");
    const verdict = (r: AccessRequest, what: "approve" | "deny" | "revoke") => {
      const b = el("button", { type: "button", class: what === "approve" ? "" : "danger" }, what[0]!.toUpperCase() + what.slice(1));
      b.addEventListener("click", () => {
        b.disabled = true;
        api("POST", `/api/v1/access-requests/${encodeURIComponent(r.id)}/${what}`, { comment: "" }).then(load).catch(show(error));
      });
      return b;
    };
    list.replaceChildren(
      table(
        "access-requests",
        ["Request", "Requester", "Actions", "Nodes", "Reason", "Duration", "Status", "Expires", ""],
        requests.map((r) => {
          const acts = el("td", {});
          // The server refuses an approval by the requester and by anyone not allowed to approve.
          if (canApprove && r.status === "Pending" && r.requester !== me) acts.append(verdict(r, "approve"), " ", verdict(r, "deny"));
          // An approved grant may be revoked by an approver, or given up by its requester.
          if ((canApprove || r.requester === me) && r.status === "Approved") acts.append(verdict(r, "revoke"));
          const row = cells(r.id, r.requester, r.actions.join(", "), r.nodes.join(", "), r.reason, `${Math.round(r.duration_secs / 60)} min`, r.status, r.expires_at ?? "");
          row.append(acts);
          return row;
        }),
      ),
    );
  };
  ask.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    api("POST", "/api/v1/access-requests", {
      targets: targets.value.split(",").map((t) => t.trim()).filter(Boolean),
      actions: actions.value.split(",").map((t) => t.trim()).filter(Boolean),
      reason: reason.value,
      duration_secs: Number(minutes.value) * 60,
    })
      .then(load)
      .catch(show(error));
  });
  await load();
}

interface User {
  name: string;
  source: string;
  attributes: Record<string, string>;
  groups: string[];
  disabled: boolean;
  locked_until?: string;
  created_at: string;
}

export async function usersPage(main: HTMLElement, canSeePolicies: boolean): Promise<void> {
  const error = el("p", { class: "error", role: "alert" });
  main.replaceChildren(el("h1", {}, "Users and policies"), error);
  const [users, groups] = await Promise.all([
    api<User[]>("GET", "/api/v1/users"),
    api<{ name: string; description: string; members: string[] }[]>("GET", "/api/v1/groups"),
  ]);
  main.append(
    el("h2", {}, "Users"),
    el(
      "div",
      { class: "scroll" },
      table(
        "users",
        ["Name", "Source", "Groups", "Attributes", "State", "Created"],
        users.map((u) =>
          cells(
            u.name,
            u.source,
            u.groups.join(", "),
            Object.entries(u.attributes)
              .map(([k, v]) => `${k}=${v}`)
              .join(", "),
            u.disabled ? "disabled" : u.locked_until ? `locked until ${u.locked_until}` : "active",
            u.created_at,
          ),
        ),
      ),
    ),
    el("h2", {}, "Groups"),
    el("div", { class: "scroll" }, table("groups", ["Name", "Description", "Members"], groups.map((g) => cells(g.name, g.description, g.members.join(", "))))),
  );
  if (!canSeePolicies) return;
  const policies = await api<{ name: string; text: string; updated_at: string }[]>("GET", "/api/v1/policies");
  const who = el("input", { id: "check-user" });
  const action = el("input", { id: "check-action", placeholder: "SendCommand" });
  const node = el("input", { id: "check-node", placeholder: "node ID (node actions)" });
  const doc = el("input", { id: "check-document", placeholder: "document (optional)" });
  const answer = el("p", { role: "status", id: "check-answer" });
  const check = el(
    "form",
    { class: "row" },
    label("check-user", "User"),
    who,
    label("check-action", "Action"),
    action,
    label("check-node", "Node"),
    node,
    label("check-document", "Document"),
    doc,
    el("button", { type: "submit" }, "Check"),
  );
  check.addEventListener("submit", (ev) => {
    ev.preventDefault();
    api<{ decision: string; reasons: string[]; errors: string[] }>("POST", "/api/v1/policies/check", {
      user: who.value.trim(),
      action: action.value.trim(),
      node: node.value.trim() || undefined,
      document: doc.value.trim() || undefined,
    })
      .then((r) => {
        answer.textContent = `${r.decision}${r.reasons.length ? ` by ${r.reasons.join(", ")}` : " (no policy applies: denied by default)"}${r.errors.length ? `; errors: ${r.errors.join("; ")}` : ""}`;
      })
      .catch(show(answer));
  });
  main.append(
    el("h2", {}, "Policy check"),
    el("p", { class: "muted" }, "Would this user be allowed this action? The answer names the policies that decided."),
    check,
    answer,
    el("h2", {}, "Policies"),
    ...policies.flatMap((p) => [el("h3", {}, `${p.name} (updated ${p.updated_at})`), el("pre", { class: "output" }, p.text)]),
  );
}
