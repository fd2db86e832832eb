/**
 * The docs stay true to the repository: docs/settings.md is what scripts/settings-doc.ts makes of the config schema
 * now, and every relative link in the Markdown docs names a file (and heading) that exists.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';
import { readSettings, readSources, repoRoot, SETTINGS_DOC_PATH, settingsDoc } from '../../scripts/settings-doc.js';
import { anchors, withoutCode } from '../helpers/markdown.js';

const ROOT = repoRoot();

t.test('docs/settings.md is what `npm run settings-doc` makes of src/config.ts and config/*.json', async (t) => {
  const fresh = settingsDoc(readSources(ROOT));
  const committed = existsSync(join(ROOT, SETTINGS_DOC_PATH)) ? readFileSync(join(ROOT, SETTINGS_DOC_PATH), 'utf8') : '';
  if (committed !== fresh) {
    const a = committed.split('\n');
    const b = fresh.split('\n');
    let i = 0;
    while (i < a.length && a[i] === b[i]) i++;
    t.fail(`docs/settings.md is stale: run npm run settings-doc (first difference at line ${i + 1}: committed ${JSON.stringify(a[i])}, generated ${JSON.stringify(b[i])})`);
  } else {
    t.pass('docs/settings.md is up to date');
  }
});

t.test('the generator reads every setting, and fails on what it cannot document', async (t) => {
  const sources = readSources(ROOT);
  const settings = readSettings(sources.configTs);
  t.same(settings.map((s) => s.key).sort(), Object.keys(sources.defaults).sort(), 'one entry per setting of config/default.json');
  const doc = settingsDoc(sources);
  t.match(doc, '| [`batchMax`](#batchmax) | `SHOP_BATCH_MAX` | `1024` |', 'a row: name, variable, default');
  t.match(doc, 'an integer, 1 to 100,000', 'the range from the check');
  t.match(doc, /## `partitions`\n\nVariable `SHOP_PARTITIONS` · default `2` · cluster profile `8` · test profile `8` ·/, 'profile overrides');

  const changed = sources.configTs.replace('/** How long the gateway waits for a read before answering 503. */', '/** Something else. */');
  t.not(changed, sources.configTs, 'the doc comment to change is there');
  t.not(settingsDoc({ ...sources, configTs: changed }), doc, 'a changed doc comment changes the document (so a stale file is caught)');

  const undocumented = sources.configTs.replace('/** How long the gateway waits for a read before answering 503. */\n', '');
  t.throws(() => settingsDoc({ ...sources, configTs: undocumented }), /setting readDeadlineMs has no doc comment/);
  t.throws(() => settingsDoc({ ...sources, profiles: { ...sources.profiles, extra: { nope: 1 } } }), /config\/extra\.json sets nope, which is no setting/);
});

function markdownFiles(): string[] {
  const docs = (dir: string): string[] =>
    readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? docs(join(dir, e.name)) : e.name.endsWith('.md') ? [join(dir, e.name)] : []));
  return ['README.md', 'deploy/README.md', ...docs('docs')];
}

t.test('every relative link in README.md, deploy/README.md and docs/ names a file and heading that exist', async (t) => {
  const broken: string[] = [];
  for (const file of markdownFiles()) {
    const text = readFileSync(join(ROOT, file), 'utf8');
    for (const [, target] of withoutCode(text).matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(target!)) continue;
      const [path, hash] = target!.split('#') as [string, string | undefined];
      const to = path === '' ? join(ROOT, file) : resolve(dirname(join(ROOT, file)), path);
      if (!existsSync(to)) {
        broken.push(`${file}: ${target} (no file ${relative(ROOT, to)})`);
        continue;
      }
      if (hash && to.endsWith('.md') && !anchors(readFileSync(to, 'utf8')).has(hash)) broken.push(`${file}: ${target} (no such heading in ${relative(ROOT, to)})`);
    }
  }
  t.same(broken, [], 'no broken links');
});

t.test('nothing cites the API contract outside the repository', async (t) => {
  t.ok(existsSync(join(ROOT, 'docs', 'api.md')), 'docs/api.md is the contract');
  const outside: string[] = [];
  const scan = (dir: string) => {
    for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) scan(p);
      else if (/\.(ts|md|json|ya?ml|sh)$/.test(e.name) && /shared\/API\.md|\.\.\/shared\//.test(readFileSync(join(ROOT, p), 'utf8'))) outside.push(p);
    }
  };
  for (const dir of ['src', 'test', 'bench', 'docs', 'deploy', 'scripts']) scan(dir);
  if (/shared\/API\.md|\.\.\/shared\//.test(readFileSync(join(ROOT, 'README.md'), 'utf8'))) outside.push('README.md');
  t.same(outside, [], 'files citing the design folder beside the repository (point them at docs/api.md)');
});
