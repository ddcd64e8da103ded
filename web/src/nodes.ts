// The node table: every node the user may see, filtered by status and platform on the server
// and by free text here, sortable by any column, and the same rows as a CSV report.

import { allNodes, type Node } from "./api";
import { COLUMNS, row, toCsv } from "./csv";
import { el } from "./dom";

interface View {
  status: string;
  platform: string;
  text: string;
  sort: number;
  descending: boolean;
}

export async function nodesPage(main: HTMLElement): Promise<void> {
  const view: View = { status: "", platform: "", text: "", sort: 1, descending: false };
  const status = select("Status", ["", "online", "connectionlost", "inactive"], ["Any", "Online", "Connection lost", "Inactive"]);
  const platform = select("Platform", ["", "linux", "macos"], ["Any", "Linux", "macOS"]);
  const search = el("input", { type: "search", id: "node-search", placeholder: "Search name, ID, IP, tag" });
  const searchLabel = el("label", { for: "node-search" }, "Search");
  const download = el("button", { type: "button", id: "download-report" }, "Download report");
  const count = el("p", { id: "node-count", role: "status" });
  const table = el("table", { id: "nodes", "aria-label": "Nodes" });
  main.replaceChildren(
    el("h1", {}, "Nodes"),
    el("div", { class: "filters" }, status.label, status.select, platform.label, platform.select, searchLabel, search, download),
    count,
    // A narrow window scrolls the table, not the page.
    el("div", { class: "scroll" }, table),
  );

  let nodes: Node[] = [];
  // Only the latest load may fill the table: an earlier, slower answer is for other filters.
  let latest = 0;
  const load = async () => {
    const filters: string[] = [];
    if (view.status) filters.push(`status=${view.status}`);
    if (view.platform) filters.push(`platform=${view.platform}`);
    const mine = ++latest;
    count.textContent = "Loading…";
    const loaded = await allNodes(filters);
    if (mine !== latest) return;
    nodes = loaded;
    render();
  };
  const shown = (): Node[] => {
    const text = view.text.toLowerCase();
    const rows = nodes.filter((n) => !text || row(n).some((c) => c.toLowerCase().includes(text)));
    const key = (n: Node) => row(n)[view.sort] ?? "";
    rows.sort((a, b) => key(a).localeCompare(key(b)) * (view.descending ? -1 : 1));
    return rows;
  };
  const render = () => {
    const rows = shown();
    count.textContent = `${rows.length} of ${nodes.length} nodes`;
    const head = el(
      "tr",
      {},
      ...COLUMNS.map((name, i) => {
        const sorted = view.sort === i;
        const button = el("button", { type: "button", class: "sort" }, name);
        button.addEventListener("click", () => {
          view.descending = sorted ? !view.descending : false;
          view.sort = i;
          render();
        });
        return el("th", { scope: "col", "aria-sort": sorted ? (view.descending ? "descending" : "ascending") : "none" }, button);
      }),
    );
    const body = rows.map((n) =>
      el(
        "tr",
        { "data-node": n.id },
        ...row(n).map((c, i) =>
          i === 2
            ? el("td", {}, el("span", { class: `status ${n.status.toLowerCase()}` }, c))
            : i === 1
              ? el("td", {}, el("a", { href: `#/nodes/${encodeURIComponent(n.id)}` }, c))
              : el("td", {}, c),
        ),
      ),
    );
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
  };

  status.select.addEventListener("change", () => {
    view.status = status.select.value;
    void load().catch(show(count));
  });
  platform.select.addEventListener("change", () => {
    view.platform = platform.select.value;
    void load().catch(show(count));
  });
  search.addEventListener("input", () => {
    view.text = search.value;
    render();
  });
  download.addEventListener("click", () => {
    const blob = new Blob([toCsv(shown())], { type: "text/csv" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "drover-nodes.csv" });
    a.click();
    // Some browsers read the URL after click() returns.
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
  });
  await load();
}

function select(label: string, values: string[], names: string[]) {
  const id = `filter-${label.toLowerCase()}`;
  const s = el("select", { id }, ...values.map((v, i) => el("option", { value: v }, names[i] ?? v)));
  return { select: s, label: el("label", { for: id }, label) };
}

function show(where: HTMLElement) {
  return (e: unknown) => {
    where.textContent = e instanceof Error ? e.message : String(e);
  };
}
