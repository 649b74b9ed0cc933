// Corrects one line of ts-mls 2.0.0-rc.10 after `npm ci` (run as the package's postinstall).
//
// RFC 9420, section 12.4: a commit MUST carry an UpdatePath when it covers at least one Update
// or Remove proposal. ts-mls decides that with `> 1` instead of `> 0`, so a commit removing one
// member has no path; OpenMLS (the Rust SDK) refuses it ("Unable to determine commit path") and
// every Rust member loses the group. The fix makes the comparison `> 0`. It is applied only to
// the exact version the SDK pins, and fails the install if the line is not found, so an upgrade
// that moved it cannot go unnoticed; the interop test in which TypeScript removes a Rust user
// fails without it.

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pinned = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).dependencies["ts-mls"];
const packageDir = join(root, "node_modules", "ts-mls");
const version = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8")).version;
if (version !== pinned) {
  throw new Error(`ts-mls ${version} is installed but ${pinned} is pinned: review scripts/patch-ts-mls.mjs`);
}

const file = join(packageDir, "dist", "src", "clientState.js");
const source = readFileSync(file, "utf8");
const wrong =
  "Object.values(grouped[defaultProposalTypes.update]).length > 1 ||\n" +
  "            Object.values(grouped[defaultProposalTypes.remove]).length > 1;";
const right =
  "Object.values(grouped[defaultProposalTypes.update]).length > 0 ||\n" +
  "            Object.values(grouped[defaultProposalTypes.remove]).length > 0;";
if (source.includes(right)) {
  process.exit(0);
}
if (!source.includes(wrong)) {
  throw new Error(`${file}: the path-required check was not found; review scripts/patch-ts-mls.mjs`);
}
writeFileSync(file, source.replace(wrong, right));
console.log("ts-mls: commits that remove or update members carry an UpdatePath (RFC 9420, section 12.4)");
