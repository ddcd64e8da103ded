import { defineConfig } from "vite";

// Every asset is emitted as a file (no inline data: URLs, no CDN), so that the server's
// Content-Security-Policy can stay at 'self' and the console works with no internet.
export default defineConfig({
  base: "/",
  build: {
    assetsInlineLimit: 0,
    sourcemap: false,
    target: "es2022",
  },
});
