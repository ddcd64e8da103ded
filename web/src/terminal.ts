// The browser terminal: xterm.js on the session WebSocket of `drover shell`, with resize,
// copy and paste (Ctrl+Shift+C / Ctrl+Shift+V), and a reconnect that resumes where the
// connection was lost (output acknowledged, unacknowledged input sent again).

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { api, csrfToken, type SessionView } from "./api";
import { el, show } from "./dom";
import * as frames from "./frames";

/// Acknowledge output after this many bytes, or this long after the first unacknowledged.
const ACK_EVERY = 64 * 1024;
const ACK_AFTER_MS = 200;
/// How long a lost connection is retried before the terminal gives up.
const RESUME_FOR_MS = 60_000;

export async function terminalPage(main: HTMLElement, node: string, alive: () => boolean): Promise<void> {
  const status = el("p", { id: "terminal-status", role: "status" }, "Starting a session…");
  const end = el("button", { type: "button", id: "terminal-end" }, "End session");
  const box = el("div", { id: "terminal", class: "terminal" });
  main.replaceChildren(el("div", { class: "row" }, el("h1", {}, `Terminal on ${node}`), end), status, box);

  const term = new Terminal({ cursorBlink: true, fontFamily: "ui-monospace, monospace", fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const session = await api<SessionView>("POST", "/api/v1/sessions", { node, cols: term.cols, rows: term.rows, term: "xterm-256color" });
  box.dataset.session = session.id;
  status.textContent = `Session ${session.id} on ${node}`;

  const received = [0, 0];
  let acked = [0, 0];
  let sent = 0;
  let unacked: { offset: number; data: Uint8Array }[] = [];
  let ackTimer: number | undefined;
  let ws: WebSocket | undefined;
  let over = false;
  const encoder = new TextEncoder();

  const sendAck = () => {
    ackTimer = undefined;
    if (ws?.readyState !== WebSocket.OPEN) return;
    acked = [...received];
    ws.send(frames.ack(received[0]!, received[1]!));
  };
  const finish = (why: string) => {
    over = true;
    status.textContent = why;
    end.hidden = true;
    term.write(`\r\n\x1b[2m[${why}]\x1b[0m\r\n`);
    box.dataset.ended = "true";
    ro.disconnect();
  };

  const attach = () =>
    new Promise<"closed" | "lost" | "failed">((resolve) => {
      // Only ever this server: the CSRF token goes with the request.
      const url = new URL(session.stream_path, location.href);
      url.protocol = "wss:";
      if (url.host !== location.host) throw new Error(`refusing a stream elsewhere: ${url.host}`);
      const s = new WebSocket(url, ["drover.session.v1", `drover.csrf.${csrfToken()}`]);
      s.binaryType = "arraybuffer";
      let opened = false;
      s.onopen = () => {
        opened = true;
        ws = s;
        status.textContent = `Session ${session.id} on ${node}`;
        s.send(frames.ack(received[0]!, received[1]!));
        acked = [...received];
      };
      s.onmessage = (ev: MessageEvent<ArrayBuffer>) => {
        const f = frames.decode(ev.data);
        if (f.kind === "output") {
          const i = f.stream - 1;
          const skip = Math.max(0, received[i]! - f.offset);
          if (skip < f.data.length) {
            term.write(f.data.subarray(skip));
            received[i] = Math.max(received[i]!, f.offset) + f.data.length - skip;
          }
          const pending = received[0]! - acked[0]! + received[1]! - acked[1]!;
          if (pending >= ACK_EVERY) sendAck();
          else ackTimer ??= window.setTimeout(sendAck, ACK_AFTER_MS);
        } else if (f.kind === "inputAck") {
          unacked = unacked.filter((u) => u.offset + u.data.length > f.offset);
          // After a resume: what the server lacks, again.
          for (const u of unacked) {
            const from = Math.max(0, f.offset - u.offset);
            if (from < u.data.length) s.send(frames.input(u.offset + from, u.data.subarray(from)));
          }
        } else if (f.kind === "closed") {
          finish(`session ${f.status}${f.exitCode === undefined ? "" : `, exit ${f.exitCode}`}${f.message ? `: ${f.message}` : ""}`);
          s.close();
          resolve("closed");
        }
      };
      s.onclose = () => {
        if (ws === s) ws = undefined;
        resolve(over ? "closed" : opened ? "lost" : "failed");
      };
    });

  term.onData((d) => {
    if (over) return;
    const data = encoder.encode(d);
    const offset = sent;
    sent += data.length;
    unacked.push({ offset, data });
    if (ws?.readyState === WebSocket.OPEN) ws.send(frames.input(offset, data));
  });
  term.onResize(({ cols, rows }) => {
    box.dataset.cols = String(cols);
    box.dataset.rows = String(rows);
    if (ws?.readyState === WebSocket.OPEN) ws.send(frames.resize(cols, rows));
  });
  box.dataset.cols = String(term.cols);
  box.dataset.rows = String(term.rows);
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== "keydown" || !e.ctrlKey || !e.shiftKey) return true;
    // The browser's own meaning of these keys (Ctrl+Shift+V pastes as plain text) would act
    // a second time.
    if (e.code === "KeyC") {
      e.preventDefault();
      void navigator.clipboard.writeText(term.getSelection()).catch(() => undefined);
      return false;
    }
    if (e.code === "KeyV") {
      e.preventDefault();
      void navigator.clipboard.readText().then((t) => term.paste(t)).catch(() => undefined);
      return false;
    }
    return true;
  });
  const ro = new ResizeObserver(() => fit.fit());
  ro.observe(box);
  end.addEventListener("click", () => {
    api("POST", `/api/v1/sessions/${encodeURIComponent(session.id)}/terminate`).catch(show(status));
  });
  term.focus();

  // Leaving the page ends the session: nothing in the console could attach to it again.
  const leave = () => {
    if (!over) {
      over = true;
      void api("POST", `/api/v1/sessions/${encodeURIComponent(session.id)}/terminate`).catch(() => undefined);
    }
    ws?.close();
    ro.disconnect();
    term.dispose();
  };
  window.addEventListener("hashchange", leave, { once: true });

  // Attach, and attach again while the session lives: a lost connection is retried for
  // RESUME_FOR_MS from the last time one was open.
  let lostAt = 0;
  let pause = 100;
  while (alive() && !over) {
    const how = await attach();
    if (how === "closed" || over || !alive()) break;
    if (how === "lost") {
      lostAt = Date.now();
      pause = 100;
    }
    lostAt ||= Date.now();
    const s = await api<SessionView>("GET", `/api/v1/sessions/${encodeURIComponent(session.id)}`).catch(() => undefined);
    if (s?.ended_at) {
      finish(`session ${s.status}${s.exit_code === undefined ? "" : `, exit ${s.exit_code}`}`);
      break;
    }
    if (Date.now() - lostAt > RESUME_FOR_MS) {
      finish("lost the connection to the server");
      break;
    }
    status.textContent = "Connection lost; reconnecting…";
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 2000);
  }
}
