// The server's REST API, as the console uses it: the session is an HttpOnly cookie, and every
// change carries the CSRF token from the cookie the server set beside it.

import type { ParamDef } from "./params";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const CSRF_COOKIE = "__Host-drover_csrf";

export function csrfToken(): string {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(value.join("="));
  }
  return "";
}

/// Called when the server answers 401 to a signed-in page (the session expired or was
/// revoked): the console shows its login page again.
let signedOut: () => void = () => {};
export function onSignedOut(f: () => void): void {
  signedOut = f;
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  // Only the API's own answers are JSON; a proxy's error page is not.
  const isJson = resp.headers.get("Content-Type")?.startsWith("application/json") ?? false;
  const json: unknown = isJson ? await resp.json() : undefined;
  if (!resp.ok) {
    const err = (json as { error?: { message?: string } } | undefined)?.error;
    const message = err?.message ?? `${resp.status} ${resp.statusText}`;
    if (resp.status === 401 && !path.startsWith("/api/v1/auth/")) signedOut();
    throw new ApiError(resp.status, message);
  }
  return json as T;
}

export interface Node {
  id: string;
  name: string;
  tags: Record<string, string>;
  status: string;
  last_seen_at?: string;
  registered_at: string;
  hostname: string;
  platform: string;
  os_name: string;
  os_version: string;
  arch: string;
  agent_version: string;
  ip_addresses: string[];
  kernel?: string;
  boot_time?: string;
}

interface NodePage {
  nodes: Node[];
  next_cursor?: string;
}

/// Only the nodes on which the user may also take `action` (with `document`, for SendCommand).
export interface May {
  action: string;
  document?: string;
}

/// Every node the user may see that matches `filters` (the API's `filter` values).
export async function allNodes(filters: string[], may?: May): Promise<Node[]> {
  const nodes: Node[] = [];
  let cursor: string | undefined;
  do {
    const q = new URLSearchParams();
    for (const f of filters) q.append("filter", f);
    if (may) q.set("may", may.action);
    if (may?.document) q.set("document", may.document);
    q.set("limit", "1000");
    if (cursor) q.set("cursor", cursor);
    const page = await api<NodePage>("GET", `/api/v1/nodes?${q}`);
    nodes.push(...page.nodes);
    cursor = page.next_cursor;
  } while (cursor);
  return nodes;
}

export interface WhoAmI {
  user: { name: string };
  /// The actions on the server itself this session may take (ReadAudit, ReadUsers, ...).
  server_actions: string[];
  /// The actions on documents it may take whatever the name (CreateDocument, ...).
  document_actions: string[];
}

export interface AuthMethods {
  password: boolean;
  oidc?: { name: string };
}

/// Whether the user may take `action` on at least one node: what the console offers. One
/// page of one node: the server reads on past the nodes the user may not act on.
export async function mayOnAny(action: string): Promise<boolean> {
  const q = new URLSearchParams({ may: action, limit: "1" });
  const page = await api<NodePage>("GET", `/api/v1/nodes?${q}`);
  return page.nodes.length > 0;
}

export interface StepView {
  name: string;
  status: string;
  exit_code?: number;
  stdout: string;
  stderr: string;
  truncated: boolean;
  output_cut: boolean;
}

export interface InvocationView {
  id: string;
  command_id: string;
  node_id: string;
  node_name: string;
  status: string;
  status_detail: string;
  exit_code?: number;
  requested_at: string;
  started_at?: string;
  finished_at?: string;
  steps: StepView[];
}

export interface CommandView {
  id: string;
  sender: string;
  document: string;
  document_version: string;
  parameters: Record<string, unknown>;
  targets: string[];
  max_concurrency: string;
  max_errors: string;
  delivery_timeout_secs: number;
  execution_timeout_secs: number;
  comment: string;
  created_at: string;
  status: string;
  target_count: number;
  counts: Record<string, number>;
  done: boolean;
  version: number;
}

export interface SendCommand {
  document: string;
  parameters: Record<string, unknown>;
  targets: string[];
  max_concurrency?: string;
  max_errors?: string;
  delivery_timeout_secs?: number;
  execution_timeout_secs?: number;
  comment?: string;
}

/// Follows a command until it is done, calling `progress` with each state seen (the server's
/// long poll answers at most ten times a second). `stop` ends the wait early.
export async function follow(
  id: string,
  progress: (c: CommandView) => void,
  stop: () => boolean = () => false,
): Promise<CommandView> {
  let c = await api<CommandView>("GET", `/api/v1/commands/${encodeURIComponent(id)}`);
  progress(c);
  while (!c.done && !stop()) {
    c = await api<CommandView>("GET", `/api/v1/commands/${encodeURIComponent(id)}/wait?seen=${c.version}&timeout_ms=25000`);
    progress(c);
  }
  return c;
}

/// Runs one of the built-in Fleet Manager documents on one node and returns its result: an
/// admin task done through Run Command, never a shell.
export async function runTask(node: string, document: string, parameters: Record<string, unknown> = {}): Promise<InvocationView> {
  const sent = await api<CommandView>("POST", "/api/v1/commands", {
    document,
    parameters,
    targets: [node],
    delivery_timeout_secs: 30,
    execution_timeout_secs: 60,
    comment: "Fleet Manager",
  } satisfies SendCommand);
  await follow(sent.id, () => undefined);
  return api<InvocationView>("GET", `/api/v1/commands/${encodeURIComponent(sent.id)}/invocations/${encodeURIComponent(node)}`);
}

/// The stdout of a task that must succeed; its error output otherwise.
export function taskOutput(inv: InvocationView): string {
  if (inv.status !== "Success") {
    const err = inv.steps.map((s) => s.stderr).join("").trim();
    throw new Error(`${inv.status}${inv.exit_code !== undefined ? ` (exit ${inv.exit_code})` : ""}${err ? `: ${err}` : ""}${inv.status_detail ? ` ${inv.status_detail}` : ""}`);
  }
  return inv.steps.map((s) => s.stdout).join("");
}

export interface SessionView {
  id: string;
  user: string;
  node: string;
  kind: string;
  document: string;
  reason: string;
  run_as: string;
  started_at: string;
  ended_at?: string;
  status: string;
  detail: string;
  exit_code?: number;
  bytes_in: number;
  bytes_out: number;
  recorded: boolean;
  stream_path: string;
}

export interface DocumentView {
  name: string;
  version: number;
  latest_version: number;
  is_default: boolean;
  builtin: boolean;
  format: string;
  description: string;
  created_at: string;
  content?: string;
  /// A command document's parameters (absent for a session document, and in listings).
  parameters?: Record<string, ParamDef>;
}
