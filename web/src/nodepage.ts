// A node's page: inventory and tags (editable by those allowed), Connect, the CLI line to
// forward a port, and the admin tasks' tabs, each done through a Drover-FleetManager-*
// document over Run Command.

import { allNodes, api, type Node } from "./api";
import { el, show } from "./dom";
import { filesTab, logsTab, performanceTab, processesTab, usersTab } from "./tasks";

const TABS = ["overview", "processes", "files", "users", "performance", "logs"] as const;
type Tab = (typeof TABS)[number];


/// Whether the user may take `action` on this node (with `document`).
async function may(node: Node, action: string, document?: string): Promise<boolean> {
  const found = await allNodes([`name=${node.name}`], { action, document });
  return found.some((n) => n.id === node.id);
}

export async function nodePage(main: HTMLElement, id: string, tabName: string, alive: () => boolean): Promise<void> {
  const node = await api<Node>("GET", `/api/v1/nodes/${encodeURIComponent(id)}`);
  const tab: Tab = (TABS as readonly string[]).includes(tabName) ? (tabName as Tab) : "overview";
  const [canConnect, canRun, canTag] = await Promise.all([may(node, "StartSession"), may(node, "SendCommand"), may(node, "TagNode")]);
  const actions = el("div", { class: "row" });
  if (canConnect) actions.append(el("a", { class: "button", href: `#/terminal/${node.id}`, id: "connect" }, "Connect"));
  if (canRun) actions.append(el("a", { class: "button", href: `#/run/${node.id}`, id: "run-on-node" }, "Run command"));
  const tabs = el(
    "nav",
    { class: "tabs", "aria-label": "Node tabs" },
    ...TABS.map((t) => el("a", { href: `#/nodes/${node.id}/${t}`, "aria-current": t === tab ? "page" : "false" }, t[0]!.toUpperCase() + t.slice(1))),
  );
  const body = el("section", { id: `tab-${tab}` });
  main.replaceChildren(
    el("h1", {}, node.name, " ", el("span", { class: `status ${node.status.toLowerCase()}` }, node.status)),
    el("p", { class: "muted" }, node.id),
    actions,
    tabs,
    body,
  );
  switch (tab) {
    case "overview":
      return overview(body, node, canTag, canConnect);
    case "processes":
      return processesTab(body, node.id, canRun);
    case "files":
      return filesTab(body, node.id);
    case "users":
      return usersTab(body, node.id, canRun);
    case "performance":
      return performanceTab(body, node.id, alive);
    case "logs":
      return logsTab(body, node.id);
  }
}

function overview(body: HTMLElement, node: Node, canTag: boolean, canConnect: boolean): void {
  const facts: [string, string][] = [
    ["Hostname", node.hostname],
    ["Platform", `${node.platform} ${node.arch}`],
    ["OS", `${node.os_name} ${node.os_version}`],
    ["Kernel", node.kernel ?? ""],
    ["Agent version", node.agent_version],
    ["IP addresses", node.ip_addresses.join(", ")],
    ["Booted", node.boot_time ?? ""],
    ["Registered", node.registered_at],
    ["Last seen", node.last_seen_at ?? ""],
  ];
  const tags = el("table", { id: "tags", "aria-label": "Tags" });
  const error = el("p", { class: "error", role: "alert" });
  const renderTags = () => {
    tags.replaceChildren(
      ...Object.entries(node.tags).map(([k, v]) => {
        const row = el("tr", {}, el("td", {}, k), el("td", {}, v));
        if (canTag) {
          const remove = el("button", { type: "button", "aria-label": `Remove tag ${k}` }, "Remove");
          remove.addEventListener("click", () => void setTags({}, [k]).catch(show(error)));
          row.append(el("td", {}, remove));
        }
        return row;
      }),
    );
  };
  const setTags = async (set: Record<string, string>, remove: string[]) => {
    const updated = await api<Node>("PATCH", `/api/v1/nodes/${encodeURIComponent(node.id)}/tags`, { set, remove });
    node.tags = updated.tags;
    renderTags();
  };
  body.replaceChildren(
    el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("h2", {}, "Tags"),
    tags,
    error,
  );
  if (canTag) {
    const key = el("input", { id: "tag-key", placeholder: "key" });
    const value = el("input", { id: "tag-value", placeholder: "value" });
    const form = el("form", { class: "row" }, el("label", { for: "tag-key" }, "Key"), key, el("label", { for: "tag-value" }, "Value"), value, el("button", { type: "submit" }, "Set tag"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      error.textContent = "";
      void setTags({ [key.value.trim()]: value.value }, []).catch(show(error));
    });
    body.append(form);
  }
  if (canConnect) {
    body.append(
      el("h2", {}, "Forward a port"),
      el("p", {}, "From your machine, with the CLI (the browser cannot listen on a port):"),
      el("pre", { class: "output", id: "forward-line" }, `drover forward ${node.id} --remote-port 80 --local-port 8080\ndrover forward ${node.id} --remote-host db.internal --remote-port 5432 --local-port 5432`),
    );
  }
  renderTags();
}
