// GraphiQL in headless Chromium: the page at GET / loads, runs the
// InviteCustomer mutation and shows the result.
// Usage: LOWSHELL_URL=http://127.0.0.1:8080 CHROMIUM=/usr/bin/chromium node browser.mjs
//
// The page loads React and GraphiQL from unpkg.com. Test machines reach only
// package registries, so those requests are answered from the same packages,
// pinned in package.json, in node_modules/ (same files, same versions).
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.env.LOWSHELL_URL;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!base) {
  console.error('LOWSHELL_URL is not set');
  process.exit(2);
}

const types = { '.js': 'application/javascript', '.css': 'text/css' };
// https://unpkg.com/<package>@<version>/<file> → node_modules/<package>/<file>
function fromNodeModules(url) {
  const match = /^\/(@?[^@/]+(?:\/[^@/]+)?)@([^/]+)\/(.+)$/.exec(new URL(url).pathname);
  if (!match) return null;
  const [, name, version, file] = match;
  const dir = path.join(here, 'node_modules', name);
  const installed = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  if (!installed.startsWith(version)) {
    throw new Error(`the page wants ${name}@${version}; node_modules has ${installed}: update package.json`);
  }
  const full = path.join(dir, file);
  return existsSync(full) ? full : null;
}

const profile = mkdtempSync(path.join(tmpdir(), 'lowshell-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
let failed = false;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  await page.route('**/*', async (route) => {
    const url = route.request().url();
    if (url.startsWith(base)) return route.continue();
    if (url.startsWith('https://unpkg.com/')) {
      const file = fromNodeModules(url);
      if (file) {
        return route.fulfill({
          status: 200,
          contentType: types[path.extname(file)] ?? 'application/octet-stream',
          body: readFileSync(file),
        });
      }
    }
    return route.abort();
  });

  const response = await page.goto(`${base}/`);
  if (response?.status() !== 200) throw new Error(`GET / answered ${response?.status()}`);
  await page.waitForSelector('.graphiql-query-editor .CodeMirror', { timeout: 30000 });
  console.log('GraphiQL loaded');

  const email = `browser-${Date.now()}@example.com`;
  const mutation = `mutation { InviteCustomer(email: "${email}") { id email invited } }`;
  await page.evaluate((query) => {
    document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(query);
  }, mutation);
  await page.click('.graphiql-execute-button');
  const shown = await page.waitForFunction(
    (email) => {
      const result = document.querySelector('.result-window .CodeMirror');
      const text = result?.CodeMirror?.getValue() ?? '';
      return text.includes(email) ? text : false;
    },
    email,
    { timeout: 30000 },
  );
  const text = await shown.jsonValue();
  const body = JSON.parse(text);
  const customer = body?.data?.InviteCustomer;
  if (!customer || customer.email !== email || customer.invited !== true || !customer.id) {
    throw new Error(`unexpected result: ${text}`);
  }
  console.log(`GraphiQL ran InviteCustomer and shows customer ${customer.id}`);
} catch (e) {
  failed = true;
  console.error(`browser test failed: ${e.message}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
