// The GraphQL-over-HTTP audit suite (npm `graphql-http`) against a running shell.
// Usage: LOWSHELL_URL=http://127.0.0.1:8080 node audit.mjs
// Fails when a MUST audit fails; lists the SHOULD/MAY audits that do not pass.
import { auditServer } from 'graphql-http';

const base = process.env.LOWSHELL_URL;
if (!base) {
  console.error('LOWSHELL_URL is not set');
  process.exit(2);
}
const url = `${base}/graphql`;
const results = await auditServer({ url });

let mustFailed = 0;
const counts = { ok: 0, notice: 0, warn: 0, error: 0 };
for (const result of results) {
  counts[result.status] += 1;
  if (result.status === 'ok') continue;
  const must = result.name.startsWith('MUST');
  if (must) mustFailed += 1;
  let body = '';
  try {
    body = result.response ? ` (HTTP ${result.response.status})` : '';
  } catch {
    body = '';
  }
  console.log(`${must ? 'FAIL' : result.status.toUpperCase()} ${result.id} ${result.name}: ${result.reason}${body}`);
}
console.log(
  `graphql-http audit of ${url}: ${results.length} audits, ${counts.ok} ok, ` +
    `${counts.warn} warn, ${counts.notice} notice, ${counts.error} error; MUST failures: ${mustFailed}`,
);
process.exit(mustFailed === 0 ? 0 : 1);
