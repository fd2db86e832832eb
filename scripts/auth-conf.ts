/**
 * `npm run auth-conf`: writes the NATS users and permissions of src/auth.ts where deployments read them, so that the
 * two never drift: `nats/auth.conf`, and its copy in the NATS ConfigMap of deploy/k8s/nats.yaml (key `auth.conf`).
 * test/integration/auth.test.ts and test/unit/deploy.test.ts fail when either differs from what src/auth.ts generates.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { deploymentAuthConf } from '../src/auth.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const conf = deploymentAuthConf();
writeFileSync(`${ROOT}nats/auth.conf`, conf);

// The ConfigMap holds the file as a block scalar (`auth.conf: |`), indented by 4 spaces, up to the next key or
// document; everything around it stays as it is.
const manifest = `${ROOT}deploy/k8s/nats.yaml`;
const lines = readFileSync(manifest, 'utf8').split('\n');
const start = lines.indexOf('  auth.conf: |');
if (start < 0) throw new Error(`${manifest} has no "  auth.conf: |" key to write into`);
let end = start + 1;
while (end < lines.length && (lines[end]!.startsWith('    ') || lines[end] === '')) end++;
while (end > start + 1 && lines[end - 1] === '') end--; // the blank lines before the next key are not the file's
const block = conf.replace(/\n$/, '').split('\n').map((l) => (l ? `    ${l}` : ''));
writeFileSync(manifest, [...lines.slice(0, start + 1), ...block, ...lines.slice(end)].join('\n'));
