// GraphiQL in headless Chromium, offline: the page at GET / loads, runs the
// InviteCustomer mutation and shows the result, with every request to a host
// other than the shell failed (the shell serves GraphiQL's files itself).
// Usage: LOWSHELL_URL=http://127.0.0.1:8080 CHROMIUM=/usr/bin/chromium node browser.mjs
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const base = process.env.LOWSHELL_URL;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!base) {
  console.error('LOWSHELL_URL is not set');
  process.exit(2);
}
const shell = new URL(base);

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
    // No network but the shell's: no other name resolves and anything else
    // goes to a proxy that is not there (loopback is never proxied), so no
    // other host is reachable even if a request slipped past the
    // interception below...
    `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE ${shell.hostname}`,
    '--proxy-server=http://127.0.0.1:9',
    `--proxy-bypass-list=${shell.host}`,
  ],
});
let failed = false;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  // ... and every request not for the shell fails, and fails the test.
  const elsewhere = [];
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.origin === shell.origin || url.protocol === 'data:') return route.continue();
    elsewhere.push(url.href);
    return route.abort('internetdisconnected');
  });
  page.on('requestfailed', (r) => {
    if (new URL(r.url()).origin === shell.origin) console.log(`request failed: ${r.url()} ${r.failure()?.errorText}`);
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
  if (elsewhere.length > 0) throw new Error(`the page asked for other hosts: ${elsewhere.join(', ')}`);
  console.log('no request left the shell');
} catch (e) {
  failed = true;
  console.error(`browser test failed: ${e.message}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
