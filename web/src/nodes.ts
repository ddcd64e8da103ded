// The node table: every node the user may see, filtered, searched and sorted by the server
// (`GET /api/v1/node-table`), fetched a page at a time as the table scrolls, and drawn only
// where the window shows it, so 10,000 nodes scroll as smoothly as ten. "Download report"
// gives the same rows as CSV.

import { api, type Node } from "./api";
import { COLUMNS, row, toCsv } from "./csv";
import { el, show } from "./dom";

/// The server's names of the columns, in `COLUMNS` order.
const SORT_KEYS = ["id", "name", "status", "agent_version", "platform", "os", "ip", "tags", "last_seen"];
/// Every row is this tall (style.css keeps it so), which is what lets the table draw only the
/// rows in view and still scroll over all of them.
const ROW_HEIGHT = 33;
const PAGE = 500;
/// Rows drawn above and below the window, so a scroll shows rows, not a gap.
const OVERSCAN = 20;

interface Table {
  total: number;
  visible: number;
  offset: number;
  nodes: Node[];
}

interface View {
  status: string;
  platform: string;
  /// `KEY=VALUE`: only nodes with that tag (the API's `tag:` filter).
  tag: string;
  search: string;
  sort: number;
  descending: boolean;
}

export async function nodesPage(main: HTMLElement): Promise<void> {
  const view: View = { status: "", platform: "", tag: "", search: "", sort: 1, descending: false };
  const status = select("Status", ["", "online", "connectionlost", "inactive"], ["Any", "Online", "Connection lost", "Inactive"]);
  const platform = select("Platform", ["", "linux", "macos"], ["Any", "Linux", "macOS"]);
  const tag = el("input", { id: "node-tag", placeholder: "KEY=VALUE", size: "16" });
  const tagLabel = el("label", { for: "node-tag" }, "Tag");
  const search = el("input", { type: "search", id: "node-search", placeholder: "Search name, ID, IP, tag" });
  const searchLabel = el("label", { for: "node-search" }, "Search");
  const download = el("button", { type: "button", id: "download-report" }, "Download report");
  const count = el("p", { id: "node-count", role: "status" });
  const table = el("table", { id: "nodes", "aria-label": "Nodes" });
  const body = el("tbody", {});
  const scroller = el("div", { class: "vscroll", id: "node-scroll" }, table);
  main.replaceChildren(
    el("h1", {}, "Nodes"),
    el("div", { class: "filters" }, status.label, status.select, platform.label, platform.select, tagLabel, tag, searchLabel, search, download),
    count,
    scroller,
  );

  // The current query's pages, by page number; a new query starts a new cache.
  let pages = new Map<number, Node[]>();
  let pending = new Set<number>();
  let total = 0;
  let generation = 0;

  const query = (offset: number, limit: number): string => {
    const q = new URLSearchParams();
    if (view.status) q.append("filter", `status=${view.status}`);
    if (view.platform) q.append("filter", `platform=${view.platform}`);
    if (view.tag) q.append("filter", `tag:${view.tag}`);
    if (view.search) q.set("search", view.search);
    q.set("sort", SORT_KEYS[view.sort] ?? "name");
    q.set("order", view.descending ? "desc" : "asc");
    q.set("offset", String(offset));
    q.set("limit", String(limit));
    return `/api/v1/node-table?${q}`;
  };

  const fetchPage = async (page: number): Promise<void> => {
    if (pages.has(page) || pending.has(page)) return;
    const mine = generation;
    pending.add(page);
    try {
      const t = await api<Table>("GET", query(page * PAGE, PAGE));
      if (mine !== generation) return;
      pages.set(page, t.nodes);
      setCount(t);
      draw();
    } finally {
      if (mine === generation) pending.delete(page);
    }
  };

  const setCount = (t: Table) => {
    // The fleet changed between two pages: the pages held may not fit together any more.
    if (pages.size > 1 && t.total !== total) {
      void restart().catch(show(count));
      return;
    }
    total = t.total;
    count.textContent = `${t.total} of ${t.visible} nodes`;
  };

  const head = () =>
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        ...COLUMNS.map((name, i) => {
          const sorted = view.sort === i;
          const button = el("button", { type: "button", class: "sort" }, name);
          button.addEventListener("click", () => {
            view.descending = sorted ? !view.descending : false;
            view.sort = i;
            void restart().catch(show(count));
          });
          return el("th", { scope: "col", "aria-sort": sorted ? (view.descending ? "descending" : "ascending") : "none" }, button);
        }),
      ),
    );

  const spacer = (rows: number) => {
    const td = el("td", { colspan: String(COLUMNS.length) });
    const tr = el("tr", { class: "spacer", "aria-hidden": "true" }, td);
    tr.style.height = `${rows * ROW_HEIGHT}px`;
    return tr;
  };

  // Draws the rows in view (and a margin), with spacers standing for the rest.
  let drawQueued = false;
  const draw = () => {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => {
      drawQueued = false;
      const last = Math.min(total, Math.ceil((scroller.scrollTop + scroller.clientHeight) / ROW_HEIGHT) + OVERSCAN);
      const first = Math.min(last, Math.max(0, Math.floor(scroller.scrollTop / ROW_HEIGHT) - OVERSCAN));
      const rows: HTMLTableRowElement[] = [spacer(first)];
      for (let i = first; i < last; i++) {
        const n = pages.get(Math.floor(i / PAGE))?.[i % PAGE];
        if (!n) {
          void fetchPage(Math.floor(i / PAGE)).catch(show(count));
          rows.push(el("tr", { class: "loading" }, el("td", { colspan: String(COLUMNS.length) }, "…")));
          continue;
        }
        rows.push(
          el(
            "tr",
            { "data-node": n.id, "aria-rowindex": String(i + 2) },
            ...row(n).map((c, col) =>
              col === 2
                ? el("td", {}, el("span", { class: `status ${n.status.toLowerCase()}` }, c))
                : col === 1
                  ? el("td", {}, el("a", { href: `#/nodes/${encodeURIComponent(n.id)}` }, c))
                  : el("td", { title: c }, c),
            ),
          ),
        );
      }
      rows.push(spacer(Math.max(0, total - last)));
      body.replaceChildren(...rows);
      table.setAttribute("aria-rowcount", String(total + 1));
    });
  };

  const restart = async () => {
    generation++;
    pages = new Map();
    pending = new Set();
    scroller.scrollTop = 0;
    count.textContent = "Loading…";
    table.replaceChildren(head(), body);
    await fetchPage(0);
  };

  scroller.addEventListener("scroll", draw, { passive: true });
  // Redrawn when the window changes size, for as long as this table is shown.
  const resized = () => (scroller.isConnected ? draw() : window.removeEventListener("resize", resized));
  window.addEventListener("resize", resized);
  status.select.addEventListener("change", () => {
    view.status = status.select.value;
    void restart().catch(show(count));
  });
  platform.select.addEventListener("change", () => {
    view.platform = platform.select.value;
    void restart().catch(show(count));
  });
  tag.addEventListener("change", () => {
    const t = tag.value.trim();
    if (t && !t.includes("=")) {
      count.textContent = "A tag filter is KEY=VALUE";
      return;
    }
    view.tag = t;
    void restart().catch(show(count));
  });
  // The server searches; wait for a pause in the typing before asking.
  let typing: number | undefined;
  search.addEventListener("input", () => {
    window.clearTimeout(typing);
    typing = window.setTimeout(() => {
      view.search = search.value.trim();
      void restart().catch(show(count));
    }, 150);
  });
  download.addEventListener("click", () => {
    void everyRow()
      .then((nodes) => {
        const blob = new Blob([toCsv(nodes)], { type: "text/csv" });
        const a = el("a", { href: URL.createObjectURL(blob), download: "drover-nodes.csv" });
        a.click();
        // Some browsers read the URL after click() returns.
        setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
      })
      .catch(show(count));
  });
  // The report: every row of the current filters, search and order.
  const everyRow = async (): Promise<Node[]> => {
    const out: Node[] = [];
    for (let offset = 0; ; offset += 1000) {
      const t = await api<Table>("GET", query(offset, 1000));
      out.push(...t.nodes);
      if (offset + 1000 >= t.total) return out;
    }
  };
  await restart();
}

function select(label: string, values: string[], names: string[]) {
  const id = `filter-${label.toLowerCase()}`;
  const s = el("select", { id }, ...values.map((v, i) => el("option", { value: v }, names[i] ?? v)));
  return { select: s, label: el("label", { for: id }, label) };
}
