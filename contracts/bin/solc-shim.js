#!/usr/bin/env node
// Makes the npm solc build (solc-js) answer like a native `solc` for the two calls py-solc-x makes:
// `--version`, and `--standard-json` with the JSON on stdin and nothing but JSON on stdout
// (solc-js's own CLI prints a banner there first). Imports resolve against --base-path and every
// --include-path.
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require(path.join(__dirname, '..', 'node_modules', 'solc'));

const args = process.argv.slice(2);
const option = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };

if (args.includes('--version')) {
  process.stdout.write('solc, the solidity compiler commandline interface\nVersion: ' + solc.version() + '\n');
  process.exit(0);
}
if (!args.includes('--standard-json')) {
  process.stderr.write('solc-shim: only --version and --standard-json are supported\n');
  process.exit(2);
}
const roots = [option('--base-path') || process.cwd()];
args.forEach((a, i) => { if (a === '--include-path') roots.push(args[i + 1]); });
function findImports(p) {
  for (const root of roots) {
    const f = path.resolve(root, p);
    if (fs.existsSync(f)) return { contents: fs.readFileSync(f, 'utf8') };
  }
  return { error: 'File not found: ' + p };
}
process.stdout.write(solc.compile(fs.readFileSync(0, 'utf8'), { import: findImports }));
