// The error tables against their documentation, both ways: every code the code can produce is on
// docs/errors.md, and every code that page names exists.
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { EXIT_STATUS } from '../src/commands/command.js';
import { ERRORS } from '../src/imds/errors.js';
import { FETCH_FAILURE_KINDS, UPSTREAM_FAILURE_KINDS } from '../src/values/failures.js';

const FAILURE_CODES = [...UPSTREAM_FAILURE_KINDS.map((k) => `upstream_${k}`), ...FETCH_FAILURE_KINDS.map((k) => `fetch_${k}`)];

t.test('every error code is documented, and nothing undocumented exists', async (t) => {
  const doc = await readFile(new URL('../docs/errors.md', import.meta.url), 'utf8');
  const sections = doc.split(/^## /m);
  const codesIn = (heading: string) => {
    const section = sections.find((s) => s.startsWith(heading));
    t.ok(section, `docs/errors.md has a '${heading}' section`);
    return [...(section ?? '').matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]).sort();
  };
  t.same(codesIn('IMDS answers'), Object.keys(ERRORS).sort(), 'IMDS answers: the ERRORS table');
  t.same(codesIn('Exit statuses'), Object.keys(EXIT_STATUS).sort(), 'exit statuses: the EXIT_STATUS table');
  t.same(codesIn('Typed failures'), [...FAILURE_CODES].sort(), 'typed failures: every kind');
  for (const [code, entry] of Object.entries(ERRORS)) {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\` |`))!;
    if (!('upstreamStatus' in entry)) t.match(row, new RegExp(`\\| ${entry.status} \\|`), `${code}: its status ${entry.status} is documented`);
  }
  for (const [code, status] of Object.entries(EXIT_STATUS)) {
    t.match(doc, new RegExp(`^\\| \`${code}\` \\| ${status} \\|`, 'm'), `${code}: exit ${status} is documented`);
  }
});
