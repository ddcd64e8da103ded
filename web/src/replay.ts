// A finished session's recording (asciicast v2), replayed in the page with asciinema-player.

import * as AsciinemaPlayer from "asciinema-player";
import "asciinema-player/dist/bundle/asciinema-player.css";
import { api, type SessionView } from "./api";
import { el } from "./dom";

export async function replayPage(main: HTMLElement, id: string): Promise<void> {
  const s = await api<SessionView>("GET", `/api/v1/sessions/${encodeURIComponent(id)}`);
  const player = el("div", { id: "replay", class: "replay" });
  main.replaceChildren(
    el("h1", {}, `Replay of ${s.id}`),
    el("p", { class: "muted" }, `${s.user} on ${s.node}, ${s.started_at} to ${s.ended_at ?? "now"} (${s.status})`),
    player,
  );
  // The recording is read here, with the console's cookie, and handed to the player as data.
  const resp = await fetch(`/api/v1/sessions/${encodeURIComponent(id)}/recording`, { credentials: "same-origin" });
  if (!resp.ok) throw new Error(`the recording could not be read: ${resp.status} ${resp.statusText}`);
  const data = await resp.text();
  AsciinemaPlayer.create({ data }, player, { fit: "width", autoPlay: true, idleTimeLimit: 2 });
}
