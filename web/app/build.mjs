// Builds the web app into dist/: index.html, one bundled, minified app.js (the SDK, ts-mls and
// its crypto dependencies inside) and the service worker sw.js. roostd serves that directory with `[web] dir`.

import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
mkdirSync(out, { recursive: true });
const common = { bundle: true, target: "es2022", minify: true, sourcemap: true, logLevel: "warning" };
await build({ ...common, entryPoints: [join(here, "src", "main.ts")], outfile: join(out, "app.js"), format: "esm" });
// The service worker is a classic script at the root, so that its scope is the whole app.
await build({ ...common, entryPoints: [join(here, "src", "sw.ts")], outfile: join(out, "sw.js"), format: "iife" });
copyFileSync(join(here, "index.html"), join(out, "index.html"));
console.log(`built ${out}`);
