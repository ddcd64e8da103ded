// Session frames (crates/drover-proto/src/session.rs), one per WebSocket binary message: the
// same stream the CLI speaks, so the browser's terminal resumes after a lost connection as
// `drover shell` does.

const INPUT = 1;
const RESIZE = 2;
const OUTPUT = 5;
const ACK = 6;
const INPUT_ACK = 7;
const CLOSED = 8;

export type Frame =
  | { kind: "output"; stream: 1 | 2; offset: number; data: Uint8Array }
  | { kind: "inputAck"; offset: number }
  | { kind: "closed"; status: string; exitCode?: number; message: string }
  | { kind: "other" };

// Offsets are u64 on the wire; a browser session stays far below 2^53 bytes.
const u64 = (v: DataView, at: number) => Number(v.getBigUint64(at));

export function decode(buf: ArrayBuffer): Frame {
  const v = new DataView(buf);
  if (buf.byteLength < 1) throw new Error("empty session frame");
  const tag = v.getUint8(0);
  switch (tag) {
    case OUTPUT: {
      if (buf.byteLength < 18) throw new Error("short output frame");
      const stream = v.getUint8(1);
      return { kind: "output", stream: stream === 2 ? 2 : 1, offset: u64(v, 2), data: new Uint8Array(buf, 18) };
    }
    case INPUT_ACK:
      if (buf.byteLength < 9) throw new Error("short input acknowledgement");
      return { kind: "inputAck", offset: u64(v, 1) };
    case CLOSED: {
      const c = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 1))) as { status?: string; exit_code?: number; message?: string };
      return { kind: "closed", status: c.status ?? "Terminated", exitCode: c.exit_code, message: c.message ?? "" };
    }
    default:
      return { kind: "other" };
  }
}

export function input(offset: number, data: Uint8Array): ArrayBuffer {
  const b = new ArrayBuffer(9 + data.length);
  const v = new DataView(b);
  v.setUint8(0, INPUT);
  v.setBigUint64(1, BigInt(offset));
  new Uint8Array(b, 9).set(data);
  return b;
}

export function resize(cols: number, rows: number): ArrayBuffer {
  const b = new ArrayBuffer(5);
  const v = new DataView(b);
  v.setUint8(0, RESIZE);
  v.setUint16(1, cols);
  v.setUint16(3, rows);
  return b;
}

export function ack(stdout: number, stderr: number): ArrayBuffer {
  const b = new ArrayBuffer(17);
  const v = new DataView(b);
  v.setUint8(0, ACK);
  v.setBigUint64(1, BigInt(stdout));
  v.setBigUint64(9, BigInt(stderr));
  return b;
}
