// A command's live view (counts by status, each node's status and exit code, output folded by
// identical result as the CLI folds it, each node's full output) and the command history.

import { api, follow, type CommandView, type InvocationView } from "./api";
import { el, show, thead } from "./dom";

interface InvocationList {
  invocations: InvocationView[];
  next_cursor?: string;
}

async function allInvocations(id: string): Promise<InvocationView[]> {
  const out: InvocationView[] = [];
  let cursor: string | undefined;
  do {
    const q = new URLSearchParams({ limit: "1000", output: "true" });
    if (cursor) q.set("cursor", cursor);
    const page = await api<InvocationList>("GET", `/api/v1/commands/${encodeURIComponent(id)}/invocations?${q}`);
    out.push(...page.invocations);
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

const output = (i: InvocationView) => i.steps.map((s) => s.stdout + s.stderr).join("");

export async function commandPage(main: HTMLElement, id: string, alive: () => boolean): Promise<void> {
  const title = el("h1", {}, `Command ${id}`);
  const summary = el("p", { id: "command-status", role: "status" });
  const counts = el("ul", { class: "counts", id: "command-counts" });
  const cancel = el("button", { type: "button", id: "command-cancel" }, "Cancel");
  const table = el("table", { id: "invocations", "aria-label": "Nodes of the command" });
  const folded = el("div", { id: "folded" });
  const error = el("p", { class: "error", role: "alert" });
  main.replaceChildren(title, summary, counts, cancel, error, el("h2", {}, "Nodes"), el("div", { class: "scroll" }, table), el("h2", {}, "Output"), folded);
  cancel.addEventListener("click", () => {
    api("POST", `/api/v1/commands/${encodeURIComponent(id)}/cancel`).catch(show(error));
  });

  let lastFetch = 0;
  const renderInvocations = async (force: boolean) => {
    // Each node's output at most once a second while it runs, and once at the end.
    if (!force && Date.now() - lastFetch < 1000) return;
    lastFetch = Date.now();
    const invs = await allInvocations(id);
    if (!alive()) return;
    table.replaceChildren(
      thead("Node", "Status", "Detail", "Exit code", "Output"),
      el(
        "tbody",
        {},
        ...invs.map((i) => {
          const pre = el("pre", { class: "output" }, output(i));
          const full = el("details", {}, el("summary", {}, "Full output"), pre);
          // The list shortens long output; opening a node's reads all of it.
          if (i.steps.some((s) => s.output_cut)) {
            full.addEventListener(
              "toggle",
              () => {
                api<InvocationView>("GET", `/api/v1/commands/${encodeURIComponent(id)}/invocations/${encodeURIComponent(i.node_id)}`)
                  .then((whole) => {
                    pre.textContent = output(whole);
                  })
                  .catch(show(error));
              },
              { once: true },
            );
          }
          return el(
            "tr",
            { "data-node": i.node_id },
            el("td", {}, i.node_name || i.node_id),
            el("td", {}, el("span", { class: `status ${i.status.toLowerCase()}` }, i.status)),
            el("td", {}, i.status_detail),
            el("td", {}, i.exit_code === undefined ? "" : String(i.exit_code)),
            el("td", {}, full),
          );
        }),
      ),
    );
    // Nodes with the same status, exit code and output are one group, as `drover run` shows them.
    const groups = new Map<string, InvocationView[]>();
    for (const i of invs) {
      const key = JSON.stringify([i.status, i.exit_code ?? null, output(i)]);
      groups.set(key, [...(groups.get(key) ?? []), i]);
    }
    folded.replaceChildren(
      ...[...groups.values()].map((g) => {
        const first = g[0]!;
        const names = g.map((i) => i.node_name || i.node_id).join(", ");
        return el(
          "section",
          { class: "fold" },
          el("h3", {}, `${g.length} node${g.length === 1 ? "" : "s"}: ${first.status}${first.exit_code === undefined ? "" : ` (exit ${first.exit_code})`}`),
          el("p", { class: "muted" }, names),
          el("pre", { class: "output" }, output(first) || "(no output)"),
        );
      }),
    );
  };

  const final = await follow(
    id,
    (c: CommandView) => {
      if (!alive()) return;
      title.textContent = `${c.document} ${c.document_version}: ${c.status}`;
      summary.textContent = `${c.status}: ${c.target_count} target${c.target_count === 1 ? "" : "s"}, sent by ${c.sender} at ${c.created_at}`;
      counts.replaceChildren(...Object.entries(c.counts).map(([s, n]) => el("li", {}, el("span", { class: `status ${s.toLowerCase()}` }, s), ` ${n}`)));
      cancel.hidden = c.done;
      void renderInvocations(false).catch(show(error));
    },
    () => !alive(),
  );
  if (alive() && final.done) await renderInvocations(true);
}

export async function commandsPage(main: HTMLElement): Promise<void> {
  const table = el("table", { id: "commands", "aria-label": "Commands" });
  const more = el("button", { type: "button" }, "Older");
  main.replaceChildren(el("h1", {}, "Command history"), el("div", { class: "scroll" }, table), more);
  const rows: HTMLTableRowElement[] = [];
  let cursor: string | undefined;
  const load = async () => {
    const q = new URLSearchParams({ limit: "50" });
    if (cursor) q.set("cursor", cursor);
    const page = await api<{ commands: CommandView[]; next_cursor?: string }>("GET", `/api/v1/commands?${q}`);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    for (const c of page.commands) {
      rows.push(
        el(
          "tr",
          {},
          el("td", {}, el("a", { href: `#/commands/${c.id}` }, c.id)),
          el("td", {}, `${c.document} ${c.document_version}`),
          el("td", {}, el("span", { class: `status ${c.status.toLowerCase()}` }, c.status)),
          el("td", {}, Object.entries(c.counts).map(([s, n]) => `${s} ${n}`).join(", ")),
          el("td", {}, c.sender),
          el("td", {}, c.created_at),
          el("td", {}, c.comment),
        ),
      );
    }
    table.replaceChildren(
      thead("Command", "Document", "Status", "Nodes", "Sent by", "Sent at", "Comment"),
      el("tbody", {}, ...rows),
    );
  };
  more.addEventListener("click", () => void load().catch(show(more)));
  await load();
}
