// A document's parameters as a form, and the values read back, checked as the server checks
// them (types, allowed values, patterns, bounds), so that a mistake is named before sending.

import { el } from "./dom";

export interface ParamDef {
  type: "String" | "StringList" | "Integer" | "Boolean" | "StringMap" | "MapList";
  description?: string;
  default?: unknown;
  allowedValues?: string[];
  allowedPattern?: string;
  minItems?: number;
  maxItems?: number;
  minChars?: number;
  maxChars?: number;
  displayType?: string;
  sensitive?: boolean;
}

const fieldId = (name: string) => `param-${name}`;

export function paramForm(defs: Record<string, ParamDef>): HTMLElement[] {
  const names = Object.keys(defs);
  if (!names.length) return [el("p", { class: "muted" }, "This document has no parameters.")];
  return names.map((name) => {
    const def = defs[name]!;
    const id = fieldId(name);
    let input: HTMLElement;
    const initial = def.default;
    if (def.allowedValues?.length) {
      const s = el("select", { id, name }, ...def.allowedValues.map((v) => el("option", { value: v }, v)));
      if (typeof initial === "string") s.value = initial;
      input = s;
    } else if (def.type === "Boolean") {
      const c = el("input", { id, name, type: "checkbox" });
      c.checked = initial === true || initial === "true";
      input = c;
    } else if (def.type === "Integer") {
      input = el("input", { id, name, type: "number", step: "1", value: initial === undefined ? "" : String(initial) });
    } else if (def.type === "String" && def.displayType !== "textarea") {
      input = el("input", { id, name, type: def.sensitive ? "password" : "text", value: typeof initial === "string" ? initial : "" });
    } else {
      // Lists one item a line; maps and map lists as JSON.
      const text =
        initial === undefined
          ? ""
          : def.type === "StringList" && Array.isArray(initial)
            ? initial.join("\n")
            : typeof initial === "string"
              ? initial
              : JSON.stringify(initial, null, 2);
      const t = el("textarea", { id, name, rows: "4", spellcheck: "false" });
      t.value = text;
      input = t;
    }
    const required = initial === undefined ? " (required)" : "";
    return el(
      "div",
      { class: "param" },
      el("label", { for: id }, `${name}${required}`),
      input,
      el("small", { class: "muted" }, `${def.type}${def.description ? `: ${def.description}` : ""}`),
    );
  });
}

export function readParams(form: HTMLElement, defs: Record<string, ParamDef>, problems: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, def] of Object.entries(defs)) {
    const input = form.querySelector<HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement>(`#${CSS.escape(fieldId(name))}`);
    if (!input) continue;
    const raw = input instanceof HTMLInputElement && input.type === "checkbox" ? String(input.checked) : input.value;
    const bad = (why: string) => problems.push(`parameter ${name}: ${why}`);
    if (raw.trim() === "" && def.type !== "String") {
      if (def.default === undefined) bad("a value is required");
      continue;
    }
    switch (def.type) {
      case "Integer": {
        const n = Number(raw);
        if (!Number.isInteger(n)) bad(`${JSON.stringify(raw)} is not an integer`);
        else out[name] = n;
        break;
      }
      case "Boolean":
        out[name] = raw === "true";
        break;
      case "StringList": {
        const items = raw.split("\n").filter((l) => l.trim() !== "");
        if (def.minItems !== undefined && items.length < def.minItems) bad(`at least ${def.minItems} item(s)`);
        if (def.maxItems !== undefined && items.length > def.maxItems) bad(`at most ${def.maxItems} item(s)`);
        items.forEach((i) => checkString(i, def, bad));
        out[name] = items;
        break;
      }
      case "StringMap":
      case "MapList":
        try {
          out[name] = JSON.parse(raw) as unknown;
        } catch (e) {
          bad(`not JSON: ${e instanceof Error ? e.message : String(e)}`);
        }
        break;
      default:
        // Empty: the document's default, where it has one.
        if (raw === "") {
          if (def.default === undefined) bad("a value is required");
          break;
        }
        checkString(raw, def, bad);
        out[name] = raw;
    }
  }
  return out;
}

function checkString(v: string, def: ParamDef, bad: (why: string) => void): void {
  if (def.allowedValues?.length && !def.allowedValues.includes(v)) bad(`${JSON.stringify(v)} is not one of ${def.allowedValues.join(", ")}`);
  const chars = [...v].length;
  if (def.minChars !== undefined && chars < def.minChars) bad(`at least ${def.minChars} characters`);
  if (def.maxChars !== undefined && chars > def.maxChars) bad(`at most ${def.maxChars} characters`);
  if (def.allowedPattern) {
    let re: RegExp | undefined;
    try {
      re = new RegExp(def.allowedPattern, "u");
    } catch {
      // A pattern in the server's syntax that JavaScript does not read: the server checks it.
    }
    if (re && !re.test(v)) bad(`${JSON.stringify(v)} does not match ${def.allowedPattern}`);
  }
}
