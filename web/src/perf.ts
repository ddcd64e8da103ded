// The performance tab: a snapshot from Drover-FleetManager-Performance every few seconds, with
// CPU and network rates from the difference of two snapshots, drawn as small charts.

import { runTask, taskOutput } from "./api";
import { el, show, thead } from "./dom";

const EVERY_MS = 5000;
const POINTS = 60;

interface Snapshot {
  cpu: number[];
  memTotal: number;
  memAvailable: number;
  load: string;
  disks: string[][];
  net: Map<string, [number, number]>;
  time: number;
}

export function parsePerformance(text: string): Snapshot {
  const sections = new Map<string, string[]>();
  let current = "";
  for (const line of text.split("\n")) {
    const h = /^## (\w+)$/.exec(line);
    if (h) current = h[1]!;
    else if (line.trim()) sections.set(current, [...(sections.get(current) ?? []), line]);
  }
  const mem = new Map((sections.get("mem") ?? []).map((l) => [l.split(":")[0]!, Number(/(\d+)/.exec(l)?.[1] ?? 0)]));
  const net = new Map<string, [number, number]>();
  for (const l of sections.get("net") ?? []) {
    const [iface = "", rest = ""] = l.split(":");
    const f = rest.trim().split(/\s+/).map(Number);
    if (iface.trim() !== "lo") net.set(iface.trim(), [f[0] ?? 0, f[8] ?? 0]);
  }
  return {
    cpu: (sections.get("cpu")?.[0] ?? "").trim().split(/\s+/).slice(1).map(Number),
    memTotal: mem.get("MemTotal") ?? 0,
    memAvailable: mem.get("MemAvailable") ?? 0,
    load: (sections.get("load")?.[0] ?? "").split(" ").slice(0, 3).join(" "),
    disks: (sections.get("disk") ?? []).map((l) => l.trim().split(/\s+/)),
    net,
    time: Number(sections.get("time")?.[0] ?? Date.now() / 1000),
  };
}

/// Busy share of the CPU between two snapshots (idle and iowait are not busy).
function cpuBusy(a: number[], b: number[]): number {
  const total = b.reduce((s, v) => s + v, 0) - a.reduce((s, v) => s + v, 0);
  const idle = (b[3] ?? 0) + (b[4] ?? 0) - (a[3] ?? 0) - (a[4] ?? 0);
  return total > 0 ? (100 * (total - idle)) / total : 0;
}

function chart(title: string, values: number[], max: number, unit: string): HTMLElement {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${POINTS} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const last = values[values.length - 1];
  svg.setAttribute("aria-label", `${title}: ${last === undefined ? "no data" : `${last.toFixed(1)} ${unit}`}`);
  const line = document.createElementNS(ns, "polyline");
  const top = Math.max(max, ...values, 1e-9);
  line.setAttribute("points", values.map((v, i) => `${i + POINTS - values.length},${100 - (100 * v) / top}`).join(" "));
  svg.append(line);
  return el("figure", { class: "metric" }, el("figcaption", {}, `${title}: ${last === undefined ? "…" : `${last.toFixed(1)} ${unit}`}`), svg);
}

export async function performanceTab(body: HTMLElement, node: string, alive: () => boolean): Promise<void> {
  const charts = el("div", { class: "charts", id: "performance" });
  const facts = el("div", {});
  const error = el("p", { class: "error", role: "alert" });
  body.replaceChildren(el("p", { class: "muted" }, `Refreshed every ${EVERY_MS / 1000} s while this tab is open.`), error, charts, facts);
  const cpu: number[] = [];
  const mem: number[] = [];
  const rx: number[] = [];
  const tx: number[] = [];
  let prev: Snapshot | undefined;
  const push = (a: number[], v: number) => {
    a.push(v);
    if (a.length > POINTS) a.shift();
  };
  while (alive()) {
    const started = Date.now();
    // Every snapshot is a command: none while the tab is hidden.
    if (document.hidden) {
      await new Promise((r) => setTimeout(r, EVERY_MS));
      continue;
    }
    try {
      const s = parsePerformance(taskOutput(await runTask(node, "Drover-FleetManager-Performance")));
      if (!alive()) break;
      push(mem, s.memTotal ? (100 * (s.memTotal - s.memAvailable)) / s.memTotal : 0);
      if (prev) {
        const dt = Math.max(s.time - prev.time, 1);
        push(cpu, cpuBusy(prev.cpu, s.cpu));
        let r = 0;
        let t = 0;
        for (const [iface, [br, bt]] of s.net) {
          const p = prev.net.get(iface);
          if (p) {
            r += Math.max(0, br - p[0]);
            t += Math.max(0, bt - p[1]);
          }
        }
        push(rx, r / dt / 1024);
        push(tx, t / dt / 1024);
      }
      prev = s;
      charts.replaceChildren(chart("CPU", cpu, 100, "%"), chart("Memory", mem, 100, "%"), chart("Network in", rx, 1, "KiB/s"), chart("Network out", tx, 1, "KiB/s"));
      facts.replaceChildren(
        el("p", {}, `Load average: ${s.load}`),
        el(
          "table",
          { "aria-label": "Disks" },
          thead("File system", "Size (KiB)", "Used", "Available", "Use", "Mounted on"),
          el("tbody", {}, ...s.disks.map((d) => el("tr", {}, ...d.slice(0, 6).map((c) => el("td", {}, c))))),
        ),
      );
      error.textContent = "";
    } catch (e) {
      show(error)(e);
    }
    await new Promise((r) => setTimeout(r, Math.max(0, EVERY_MS - (Date.now() - started))));
  }
}
