// The node page's admin tasks. Each runs a built-in Drover-FleetManager-* document on the node
// through Run Command (so it is authorized, audited and recorded like any command) and reads
// its output; nothing here opens a shell.

import { runTask, taskOutput } from "./api";
import { el, show, thead } from "./dom";

const FM = "Drover-FleetManager-";

async function task(node: string, name: string, parameters: Record<string, unknown> = {}): Promise<string> {
  return taskOutput(await runTask(node, FM + name, parameters));
}

interface Proc {
  pid: string;
  user: string;
  cpu: number;
  mem: number;
  rss: number;
  elapsed: string;
  command: string;
}

export async function processesTab(body: HTMLElement, node: string, canKill: boolean): Promise<void> {
  const status = el("p", { role: "status", id: "processes-status" }, "Loading…");
  const filter = el("input", { type: "search", id: "process-filter", placeholder: "Filter by command or user" });
  const sortBy = el("select", { id: "process-sort" }, el("option", { value: "cpu" }, "CPU"), el("option", { value: "mem" }, "Memory"));
  const refresh = el("button", { type: "button" }, "Refresh");
  const table = el("table", { id: "processes", "aria-label": "Processes" });
  const error = el("p", { class: "error", role: "alert" });
  body.replaceChildren(
    el("div", { class: "filters" }, el("label", { for: "process-filter" }, "Filter"), filter, el("label", { for: "process-sort" }, "Sort by"), sortBy, refresh),
    status,
    error,
    el("div", { class: "scroll" }, table),
  );
  let procs: Proc[] = [];
  const render = () => {
    const text = filter.value.toLowerCase();
    const key = sortBy.value === "mem" ? (p: Proc) => p.mem : (p: Proc) => p.cpu;
    const rows = procs.filter((p) => !text || p.command.toLowerCase().includes(text) || p.user.toLowerCase().includes(text)).sort((a, b) => key(b) - key(a));
    status.textContent = `${rows.length} of ${procs.length} processes`;
    table.replaceChildren(
      thead("PID", "User", "CPU %", "Memory %", "Resident", "Running for", "Command", ""),
      el(
        "tbody",
        {},
        ...rows.map((p) => {
          const cells = [p.pid, p.user, p.cpu.toFixed(1), p.mem.toFixed(1), `${(p.rss / 1024).toFixed(1)} MiB`, p.elapsed, p.command].map((c) => el("td", {}, c));
          const tr = el("tr", { "data-pid": p.pid }, ...cells);
          if (canKill) {
            const kill = el("button", { type: "button", class: "danger" }, "Kill");
            // A second click confirms: a kill is not undone.
            kill.addEventListener("click", () => {
              if (kill.dataset.armed !== "true") {
                kill.dataset.armed = "true";
                kill.textContent = `Confirm kill ${p.pid}`;
                return;
              }
              kill.disabled = true;
              error.textContent = "";
              task(node, "KillProcess", { pid: p.pid, signal: "TERM" })
                .then(load)
                .catch(show(error));
            });
            tr.append(el("td", {}, kill));
          }
          return tr;
        }),
      ),
    );
  };
  const load = async () => {
    status.textContent = "Loading…";
    procs = parseProcesses(await task(node, "ListProcesses"));
    render();
  };
  filter.addEventListener("input", render);
  sortBy.addEventListener("change", render);
  refresh.addEventListener("click", () => void load().catch(show(error)));
  await load().catch(show(error));
}

/// `ps -o pid=,user=,pcpu=,pmem=,rss=,etime=,args=`: six fields, then the command line.
export function parseProcesses(text: string): Proc[] {
  const out: Proc[] = [];
  for (const line of text.split("\n")) {
    const m = /^\s*(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\S+)\s(.*)$/.exec(line);
    if (!m) continue;
    out.push({ pid: m[1]!, user: m[2]!, cpu: Number(m[3]), mem: Number(m[4]), rss: Number(m[5]), elapsed: m[6]!, command: m[7]!.trim() });
  }
  return out;
}

export async function filesTab(body: HTMLElement, node: string): Promise<void> {
  const path = el("input", { id: "file-path", value: "/", spellcheck: "false" });
  const go = el("button", { type: "submit" }, "Open");
  const status = el("p", { role: "status", id: "files-status" });
  const error = el("p", { class: "error", role: "alert" });
  const listing = el("table", { id: "files", "aria-label": "Directory" });
  const viewer = el("section", { id: "file-view" });
  const form = el("form", { class: "filters" }, el("label", { for: "file-path" }, "Path"), path, go);
  body.replaceChildren(form, status, error, el("div", { class: "scroll" }, listing), viewer);

  const join = (dir: string, name: string) => (dir.endsWith("/") ? dir + name : `${dir}/${name}`);
  const openDir = async (dir: string) => {
    path.value = dir;
    status.textContent = "Loading…";
    viewer.replaceChildren();
    const text = await task(node, "ListDirectory", { path: dir });
    const entries = text
      .split("\n")
      .filter((l) => l.includes("\t"))
      .map((l) => {
        const [type = "", size = "0", mtime = "0", mode = "", ...name] = l.split("\t");
        return { type, size: Number(size), mtime: Number(mtime), mode, name: name.join("\t") };
      })
      .sort((a, b) => (a.type === "d" ? 0 : 1) - (b.type === "d" ? 0 : 1) || a.name.localeCompare(b.name));
    const parent = dir === "/" ? undefined : dir.replace(/\/[^/]*\/?$/, "") || "/";
    status.textContent = `${entries.length} entries in ${dir}`;
    const link = (label: string, to: () => Promise<void>) => {
      const b = el("button", { type: "button", class: "link" }, label);
      b.addEventListener("click", () => {
        error.textContent = "";
        void to().catch(show(error));
      });
      return b;
    };
    listing.replaceChildren(
      thead("Name", "Size", "Modified", "Mode"),
      el(
        "tbody",
        {},
        ...(parent ? [el("tr", {}, el("td", {}, link("..", () => openDir(parent))), el("td", {}), el("td", {}), el("td", {}))] : []),
        ...entries.map((e) => {
          const full = join(dir, e.name);
          const name = e.type === "d" ? link(`${e.name}/`, () => openDir(full)) : e.type === "f" ? link(e.name, () => openFile(full, "head")) : e.name;
          return el(
            "tr",
            { "data-name": e.name },
            el("td", {}, name),
            el("td", {}, e.type === "d" ? "" : String(e.size)),
            el("td", {}, e.mtime ? new Date(e.mtime * 1000).toISOString().replace(".000", "") : ""),
            el("td", {}, e.mode),
          );
        }),
      ),
    );
  };
  const openFile = async (file: string, part: "head" | "tail") => {
    const text = await task(node, "ReadFile", { path: file, part, maxBytes: "1048576", lines: "200" });
    const download = el("button", { type: "button" }, "Download");
    download.addEventListener("click", () => {
      const a = el("a", { href: URL.createObjectURL(new Blob([text])), download: file.split("/").pop() || "file" });
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    });
    const other = el("button", { type: "button" }, part === "head" ? "Tail (last 200 lines)" : "Beginning");
    other.addEventListener("click", () => void openFile(file, part === "head" ? "tail" : "head").catch(show(error)));
    viewer.replaceChildren(
      el("h2", {}, file),
      el("div", { class: "row" }, other, download, el("span", { class: "muted" }, `${text.length} characters shown (at most 1 MiB)`)),
      el("pre", { class: "output", id: "file-content" }, text),
    );
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    void openDir(path.value.trim() || "/").catch(show(error));
  });
  await openDir("/").catch(show(error));
}

export async function usersTab(body: HTMLElement, node: string, canChange: boolean): Promise<void> {
  const error = el("p", { class: "error", role: "alert" });
  const users = el("table", { id: "users", "aria-label": "Users" });
  const groups = el("table", { id: "groups", "aria-label": "Groups" });
  body.replaceChildren(error, el("h2", {}, "Users"), el("div", { class: "scroll" }, users), el("h2", {}, "Groups"), el("div", { class: "scroll" }, groups));
  const load = async () => {
    const [u = "", g = ""] = (await task(node, "ListUsers")).split("\n--\n");
    const rows = (t: string) => t.split("\n").filter((l) => l.includes(":")).map((l) => l.split(":"));
    users.replaceChildren(
      thead("Name", "UID", "GID", "Home", "Shell", ""),
      el(
        "tbody",
        {},
        ...rows(u).map((r) => {
          const tr = el("tr", {}, ...r.slice(0, 5).map((c) => el("td", {}, c)));
          if (canChange && Number(r[1]) >= 1000 && r[0] !== "nobody") {
            const del = el("button", { type: "button", class: "danger" }, "Delete");
            del.addEventListener("click", () => {
              if (del.dataset.armed !== "true") {
                del.dataset.armed = "true";
                del.textContent = `Confirm delete ${r[0]}`;
                return;
              }
              void task(node, "DeleteUser", { name: r[0] }).then(load).catch(show(error));
            });
            tr.append(el("td", {}, del));
          }
          return tr;
        }),
      ),
    );
    groups.replaceChildren(thead("Name", "GID", "Members"), el("tbody", {}, ...rows(g).map((r) => el("tr", {}, ...r.slice(0, 3).map((c) => el("td", {}, c))))));
  };
  if (canChange) {
    const name = el("input", { id: "new-user", pattern: "[a-z_][a-z0-9_-]{0,31}", required: "" });
    const form = el("form", { class: "row" }, el("label", { for: "new-user" }, "New user"), name, el("button", { type: "submit" }, "Create user"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      error.textContent = "";
      void task(node, "CreateUser", { name: name.value.trim() }).then(load).catch(show(error));
    });
    body.append(form);
  }
  await load().catch(show(error));
}

export async function logsTab(body: HTMLElement, node: string): Promise<void> {
  const source = el("input", { id: "log-source", value: "journal", spellcheck: "false" });
  const lines = el("input", { id: "log-lines", type: "number", min: "1", max: "99999", value: "200" });
  const filter = el("input", { id: "log-filter", type: "search" });
  const out = el("pre", { class: "output", id: "log-output" });
  const error = el("p", { class: "error", role: "alert" });
  const form = el(
    "form",
    { class: "filters" },
    el("label", { for: "log-source" }, "Source (journal or a file under /var/log)"),
    source,
    el("label", { for: "log-lines" }, "Lines"),
    lines,
    el("label", { for: "log-filter" }, "Containing"),
    filter,
    el("button", { type: "submit" }, "Show"),
  );
  body.replaceChildren(form, error, out);
  const load = async () => {
    out.textContent = "Loading…";
    out.textContent = await task(node, "TailLog", { source: source.value.trim(), lines: lines.value, filter: filter.value });
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    void load().catch(show(error));
  });
  await load().catch(show(error));
}

export { performanceTab } from "./perf";
