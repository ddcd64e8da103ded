// The fleet report: the same rows as the node table, as CSV (RFC 4180), the columns of SSM
// Fleet Manager's report. Tag values and inventory come from the nodes: every cell is quoted,
// and one that a spreadsheet would run as a formula gets a leading apostrophe.

import type { Node } from "./api";

export const COLUMNS = [
  "Node ID",
  "Name",
  "Ping status",
  "Agent version",
  "Platform",
  "OS",
  "IP address",
  "Tags",
  "Last seen",
] as const;

export function row(n: Node): string[] {
  return [
    n.id,
    n.name,
    n.status,
    n.agent_version,
    n.platform,
    `${n.os_name} ${n.os_version}`.trim(),
    n.ip_addresses.join(" "),
    Object.entries(n.tags)
      .map(([k, v]) => `${k}=${v}`)
      .join("; "),
    n.last_seen_at ?? "",
  ];
}

/// Every cell quoted (so a spreadsheet that splits on `;` keeps it whole), and a leading
/// apostrophe where it would start a formula.
function cell(value: string): string {
  const safe = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
  return `"${safe.replace(/"/g, '""')}"`;
}

export function toCsv(nodes: Node[]): string {
  const lines = [COLUMNS.map(cell).join(",")];
  for (const n of nodes) lines.push(row(n).map(cell).join(","));
  return lines.join("\r\n") + "\r\n";
}
