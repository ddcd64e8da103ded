// The server's REST API, as the console uses it: the session is an HttpOnly cookie, and every
// change carries the CSRF token from the cookie the server set beside it.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const CSRF_COOKIE = "__Host-drover_csrf";

function csrfToken(): string {
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
}

interface NodePage {
  nodes: Node[];
  next_cursor?: string;
}

/// Every node the user may see that matches `filters` (the API's `filter` values).
export async function allNodes(filters: string[]): Promise<Node[]> {
  const nodes: Node[] = [];
  let cursor: string | undefined;
  do {
    const q = new URLSearchParams();
    for (const f of filters) q.append("filter", f);
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
}

export interface AuthMethods {
  password: boolean;
  oidc?: { name: string };
}
