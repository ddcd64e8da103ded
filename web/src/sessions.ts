// Sessions: active and past, terminate, and a link to a finished session's replay.

import { api, type SessionView } from "./api";
import { el, show, thead } from "./dom";

export async function sessionsPage(main: HTMLElement): Promise<void> {
  const active = el("input", { type: "checkbox", id: "sessions-active" });
  const table = el("table", { id: "sessions", "aria-label": "Sessions" });
  const error = el("p", { class: "error", role: "alert" });
  main.replaceChildren(
    el("h1", {}, "Sessions"),
    el("div", { class: "filters" }, active, el("label", { for: "sessions-active" }, "Only active")),
    error,
    el("div", { class: "scroll" }, table),
  );
  const load = async () => {
    const q = new URLSearchParams({ limit: "200" });
    if (active.checked) q.set("active", "true");
    const list = await api<{ sessions: SessionView[] }>("GET", `/api/v1/sessions?${q}`);
    table.replaceChildren(
      thead("Session", "User", "Node", "Kind", "Status", "Started", "Ended", ""),
      el(
        "tbody",
        {},
        ...list.sessions.map((s) => {
          const act = el("td", {});
          if (!s.ended_at) {
            const end = el("button", { type: "button", class: "danger" }, "Terminate");
            end.addEventListener("click", () => {
              end.disabled = true;
              api("POST", `/api/v1/sessions/${encodeURIComponent(s.id)}/terminate`).then(load).catch(show(error));
            });
            act.append(end);
          } else if (s.recorded) {
            act.append(el("a", { href: `#/sessions/${s.id}`, class: "button" }, "Replay"));
          }
          return el(
            "tr",
            { "data-session": s.id },
            el("td", {}, s.id),
            el("td", {}, s.user),
            el("td", {}, el("a", { href: `#/nodes/${s.node}` }, s.node)),
            el("td", {}, s.kind),
            el("td", {}, el("span", { class: `status ${s.status.toLowerCase()}` }, s.status)),
            el("td", {}, s.started_at),
            el("td", {}, s.ended_at ?? ""),
            act,
          );
        }),
      ),
    );
  };
  active.addEventListener("change", () => void load().catch(show(error)));
  await load();
}
