// Trusted Types' default policy. The console's own code never writes HTML (dom.ts sets text as
// text); two libraries do, from markup fixed in their code: asciinema-player's templates and
// its icons. The page's policy (see crates/drover-server/src/console.rs) sends every HTML
// string through here, and markup that could run script is refused, so a library that ever
// passed a node's output into innerHTML would throw rather than run it.

// The libraries' markup has no event handlers, no URLs, no entities and no forms: anything
// of the kind is refused. (A deny-list: the Content-Security-Policy, with no inline script,
// is what stops script; this keeps library markup from carrying anything active.)
const SCRIPTY =
  /<\s*\/?\s*(script|iframe|object|embed|base|meta|link|form|style)\b|[\s/"']on[a-z]+\s*=|&#|javascript:|(href|src|action|formaction|srcdoc)\s*=/i;

interface TrustedTypes {
  createPolicy(name: string, rules: { createHTML: (s: string) => string }): unknown;
}

const tt = (globalThis as { trustedTypes?: TrustedTypes }).trustedTypes;
tt?.createPolicy("default", {
  createHTML(s: string): string {
    if (SCRIPTY.test(s)) throw new TypeError("refused HTML that could run script");
    return s;
  },
});

export {};
