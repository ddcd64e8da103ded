// One helper to build elements: text is always set as text, never parsed as HTML, so nothing a
// node reports (names, tags, output) can inject markup into the page.

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string>,
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

/// A table's head: one row of column headers.
export function thead(...names: string[]): HTMLTableSectionElement {
  return el("thead", {}, el("tr", {}, ...names.map((n) => el("th", { scope: "col" }, n))));
}

export function label(id: string, text: string): HTMLLabelElement {
  return el("label", { for: id }, text);
}

/// Writes an error's message into `where` (for `.catch`).
export function show(where: HTMLElement) {
  return (e: unknown) => {
    where.textContent = e instanceof Error ? e.message : String(e);
  };
}
