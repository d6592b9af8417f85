// Builds a JavaScript function into a component with componentize-js
// (`make guest` runs it): node componentize.mjs TOOLS_DIR SOURCE WORLD OUT
// TOOLS_DIR holds node_modules/@bytecodealliance/componentize-js (pinned by the
// Makefile). Paths may be relative; they are made absolute here (componentize-js
// wants absolute paths).
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const [tools, source, world, out] = process.argv.slice(2).map((p, i) => (i === 2 ? p : path.resolve(p)));
if (!out) {
  console.error('usage: node componentize.mjs TOOLS_DIR SOURCE WORLD OUT');
  process.exit(2);
}
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const { componentize } = await import(
  pathToFileURL(path.join(tools, 'node_modules/@bytecodealliance/componentize-js/src/componentize.js')).href
);
// componentize-js resolves relative imports, and reads the WIT, only inside
// the current directory: the repository, so that a function can import
// ../sdk/js/low.js.
process.chdir(root);
const { component } = await componentize({
  sourcePath: source,
  witPath: path.join(root, 'wit'),
  worldName: world,
  // No fetch(): a function does no I/O of its own.
  disableFeatures: ['http', 'fetch-event'],
});
writeFileSync(out, component);
console.log(`${path.relative(root, out)}: ${(component.length / 1e6).toFixed(1)} MB`);
