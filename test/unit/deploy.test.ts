/**
 * deploy/: the Kubernetes manifests (schemas and what a reviewer checks), the compose file (Debian's docker-compose
 * reads it; no container engine needed), the Prometheus configs and the Grafana dashboard (every metric it queries
 * is one the code exports). Each check is also run on a broken copy, to show that it can fail.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import type { IContainer } from 'kubernetes-models/v1';
import { connectionMetrics, createGatewayMetrics, createWorkerMetrics } from '../../src/monitoring/metrics.js';
import { adminPortOf, KINDS, loadConfig } from '../../src/config.js';
import { findBinary } from '../../src/stack/processes.js';
import {
  appRole,
  configMaps,
  containersOf,
  dashboardMetrics,
  dashboardProblems,
  environmentOf,
  literalCredentials,
  loadManifests,
  reviewProblems,
  schemaProblems,
  SECRET_NAME,
  unknownFieldProblems,
  workloads,
  type K8sObject,
  type Manifest,
  type MetricCatalogue,
} from '../helpers/deploy.js';
import { promqlNames } from '../helpers/promql.js';
import { alertRules } from '../helpers/prometheus.js';

function packageRoot(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new Error('package.json not found above this test');
  }
}
const root = packageRoot();
const k8sDir = join(root, 'deploy/k8s');
const SECRET = 'shop-credentials';
const SPAWN_TIMEOUT_MS = 60_000;

/** The Secret's keys, as the command in deploy/README.md creates it. */
function documentedSecretKeys(): Set<string> {
  const readme = readFileSync(join(root, 'deploy/README.md'), 'utf8');
  const at = readme.indexOf(`kubectl create secret generic ${SECRET}`);
  if (at < 0) throw new Error(`deploy/README.md has no \`kubectl create secret generic ${SECRET}\` command`);
  const command = readme.slice(at, readme.indexOf('```', at));
  return new Set([...command.matchAll(/--from-literal=([a-z0-9-]+)=/g)].map((m) => m[1]!));
}

const { manifests, files, kustomized } = loadManifests(k8sDir);
const review = { secretName: SECRET, secretKeys: documentedSecretKeys() };

const objectNamed = (list: Manifest[], kind: string, name: string): K8sObject => {
  const found = list.find((m) => m.obj.kind === kind && m.obj.metadata.name === name);
  if (!found) throw new Error(`no ${kind}/${name} in deploy/k8s`);
  return found.obj;
};
const podSpec = (obj: K8sObject) => (obj.spec as { template: { spec: { containers: IContainer[]; terminationGracePeriodSeconds?: number } } }).template.spec;
const firstContainer = (list: Manifest[], kind: string, name: string): IContainer => podSpec(objectNamed(list, kind, name)).containers[0]!;

t.test('deploy/k8s: every object is valid against the Kubernetes schema of its kind, with no field the schema lacks', async (t) => {
  t.same(kustomized, files, 'kustomization.yaml lists every manifest file');
  t.same(await schemaProblems(manifests), [], 'kubernetes-models validate() of each object');

  const broken = structuredClone(manifests.filter((m) => m.obj.kind === 'Deployment' && m.obj.metadata.name === 'worker'));
  (broken[0]!.obj.spec as { replicas: unknown }).replicas = '3';
  broken.push({ where: 'typo', obj: { ...structuredClone(broken[0]!.obj), kind: 'Deploymnet' } });
  broken.push({ where: 'group', obj: { ...structuredClone(broken[0]!.obj), apiVersion: 'apps/v9' } });
  const found = await schemaProblems(broken);
  t.match(found, [/replicas must be integer/, /kind Deploymnet is unknown/, /apps\/v9 is unknown/], 'a bad value, an unknown kind and an unknown apiVersion fail');

  // One type check for both: the real manifests must add no problem to the misspelt one's.
  const misspelt = structuredClone(manifests.find((m) => m.obj.kind === 'Deployment')!);
  const c = podSpec(misspelt.obj).containers[0] as unknown as Record<string, unknown>;
  c.readinessProbes = c.readinessProbe;
  misspelt.where = 'misspelt';
  const unknown = unknownFieldProblems([...manifests, misspelt], root);
  t.equal(unknown.length, 1, `the only unknown field is the misspelt one: ${unknown.join('; ')}`);
  t.match(unknown[0], /^misspelt: .*readinessProbes/);
});

t.test('deploy/k8s: what a reviewer checks (resources, probes, budgets, selectors, no credentials)', async (t) => {
  t.same(reviewProblems(manifests, review), [], 'no problems in deploy/k8s');

  const replicas = Object.fromEntries(workloads(manifests).map((w) => [w.name, w.replicas]));
  t.same(replicas, { nats: 3, redis: 3, 'redis-sentinel': 3, worker: 3, gateway: 2 }, 'the topology deploy/README.md describes');
  t.equal((objectNamed(manifests, 'PodDisruptionBudget', 'nats').spec as { minAvailable?: number }).minAvailable, 2, 'NATS keeps its JetStream quorum of 2 through drains');
  const referenced = new Set(
    workloads(manifests).flatMap((w) => containersOf(w).flatMap((c) => (c.env ?? []).flatMap((e) => (e.valueFrom?.secretKeyRef ? [e.valueFrom.secretKeyRef.key] : [])))),
  );
  t.same([...referenced].sort(), [...review.secretKeys].sort(), 'the manifests use exactly the Secret keys deploy/README.md has the user create');

  const breakages: [string, (list: Manifest[]) => void, RegExp][] = [
    ['limits removed', (l) => delete firstContainer(l, 'Deployment', 'worker').resources!.limits, /worker container worker: no resources\.limits\.cpu/],
    ['a sidecar without resources', (l) => podSpec(objectNamed(l, 'StatefulSet', 'nats')).containers.push({ name: 'side', image: 'busybox' }), /container side: no resources\.requests\.cpu/],
    ['readiness on /ready', (l) => (firstContainer(l, 'Deployment', 'gateway').readinessProbe!.httpGet!.path = '/ready'), /gateway: readinessProbe must be an HTTP GET of \/readyz/],
    ['liveness removed', (l) => delete firstContainer(l, 'Deployment', 'worker').livenessProbe, /worker: livenessProbe must be an HTTP GET of \/healthz/],
    ['probe on the HTTP port', (l) => (firstContainer(l, 'Deployment', 'gateway').livenessProbe!.httpGet!.port = 'http'), /livenessProbe asks port http, but the gateway serves admin HTTP on 9401/],
    ['admin port moved', (l) => (configMaps(l).get('shop-config')!.SHOP_ADMIN_PORT = '9500'), /the worker serves admin HTTP on 9500/],
    ['admin on loopback', (l) => (objectNamed(l, 'ConfigMap', 'shop-config').data as Record<string, string>).SHOP_ADMIN_HOST = '127.0.0.1', /SHOP_ADMIN_HOST is 127\.0\.0\.1/],
    ['a bad setting', (l) => ((objectNamed(l, 'ConfigMap', 'shop-config').data as Record<string, string>).SHOP_PARTITIONS = 'many'), /settings do not load: setting partitions \(SHOP_PARTITIONS\)/],
    ['scrape annotation wrong', (l) => ((objectNamed(l, 'Deployment', 'worker').spec as { template: { metadata: { annotations: Record<string, string> } } }).template.metadata.annotations['prometheus.io/port'] = '9401'), /Deployment\/worker: annotations prometheus\.io\/scrape/],
    ['grace below the shutdown grace', (l) => (podSpec(objectNamed(l, 'Deployment', 'gateway')).terminationGracePeriodSeconds = 20), /Deployment\/gateway: terminationGracePeriodSeconds 20 must be above/],
    ['a PDB that selects nothing', (l) => ((objectNamed(l, 'PodDisruptionBudget', 'redis').spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels['app.kubernetes.io/name'] = 'redis-x'), /PodDisruptionBudget\/redis: selects the pods of 0 workloads[\s\S]*StatefulSet\/redis: no PodDisruptionBudget/],
    ['a PDB that blocks every drain', (l) => ((objectNamed(l, 'PodDisruptionBudget', 'gateway').spec as { minAvailable: number }).minAvailable = 2), /PodDisruptionBudget\/gateway: minAvailable 2 of 2 replicas/],
    ['a Service that selects nothing', (l) => ((objectNamed(l, 'Service', 'gateway').spec as { selector: Record<string, string> }).selector['app.kubernetes.io/component'] = 'gw'), /Service\/gateway: its selector .* selects no workload's pods/],
    ['a Service port no container has', (l) => ((objectNamed(l, 'Service', 'nats').spec as { ports: { targetPort: string }[] }).ports[0]!.targetPort = 'nats'), /Service\/nats: port client targets nats/],
    ['a StatefulSet without its headless Service', (l) => ((objectNamed(l, 'Service', 'redis-headless').spec as { clusterIP?: string }).clusterIP = undefined), /StatefulSet\/redis: serviceName redis-headless must be a headless Service/],
    [
      'a literal password in the environment',
      (l) => {
        const e = firstContainer(l, 'Deployment', 'worker').env!.find((e) => e.name === 'SHOP_NATS_PASSWORD')!;
        delete e.valueFrom;
        e.value = 'hunter2';
      },
      /SHOP_NATS_PASSWORD looks like a credential but is not a secretKeyRef/,
    ],
    ['a key the Secret does not have', (l) => (firstContainer(l, 'StatefulSet', 'redis').env!.find((e) => e.name === 'REDIS_PASSWORD')!.valueFrom!.secretKeyRef!.key = 'redis-pass'), /REDIS_PASSWORD comes from shop-credentials\/redis-pass/],
    ['a literal password in the NATS config', (l) => (configMaps(l).get('nats-config')!['auth.conf'] = configMaps(l).get('nats-config')!['auth.conf']!.replace('$NATS_GATEWAY_PASSWORD', 's3cret')), /auth\.conf sets a credential to a literal \(password: s3cret\)/],
    ['a literal Redis password', (l) => (configMaps(l).get('redis-scripts')!['redis-start.sh'] = configMaps(l).get('redis-scripts')!['redis-start.sh']!.replace('requirepass $REDIS_PASSWORD', 'requirepass s3cret')), /redis-start\.sh sets a credential to a literal \(requirepass s3cret\)/],
    ['a token in the app ConfigMap', (l) => ((objectNamed(l, 'ConfigMap', 'shop-config').data as Record<string, string>).SHOP_ADMIN_TOKEN = 'x'), /key SHOP_ADMIN_TOKEN looks like a credential/],
    ['a Secret in the manifests', (l) => l.push({ where: 'secret.yaml#0 Secret/shop-credentials', obj: { apiVersion: 'v1', kind: 'Secret', metadata: { name: SECRET } } }), /credentials never go into the manifests/],
    ['a script the ConfigMap lacks', (l) => (firstContainer(l, 'StatefulSet', 'redis-sentinel').command = ['sh', '/scripts/sentinel.sh']), /\/scripts\/sentinel\.sh is not a key of the ConfigMap redis-scripts/],
  ];
  for (const [what, breakIt, expected] of breakages) {
    const copy = structuredClone(manifests);
    breakIt(copy);
    t.match(reviewProblems(copy, review).join('\n'), expected, `found: ${what}`);
  }
});

t.test('deploy/k8s: the servers and the app agree on names, ports and replicas', async (t) => {
  const maps = configMaps(manifests);
  const sets = new Map(workloads(manifests).map((w) => [w.name, w]));
  const pods = (name: string, port: number, scheme = '') => {
    const w = sets.get(name)!;
    return Array.from({ length: w.replicas }, (_, i) => `${scheme}${name}-${i}.${w.serviceName}:${port}`).sort();
  };

  // nats-server itself reads the config, with the environment its container has (secrets and pod name filled in).
  const natsConf = maps.get('nats-config')?.['nats.conf'];
  t.ok(natsConf, 'ConfigMap nats-config has nats.conf');
  const natsContainer = containersOf(sets.get('nats')!)[0]!;
  const natsEnv = Object.fromEntries((natsContainer.env ?? []).map((e) => [e.name, e.value ?? (e.valueFrom?.fieldRef ? 'nats-0' : 'dummy-secret')]));
  const dir = mkdtempSync(join(tmpdir(), 'deploy-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'nats.conf'), natsConf ?? '');
  const authConf = maps.get('nats-config')?.['auth.conf'];
  t.equal(authConf, readFileSync(new URL('../../../nats/auth.conf', import.meta.url), 'utf8'), 'its auth.conf is nats/auth.conf as generated from src/auth.ts');
  t.match(natsConf, /^include \.\/auth\.conf$/m, 'and nats.conf includes it');
  writeFileSync(join(dir, 'auth.conf'), authConf ?? '');
  const natsTest = spawnSync(findBinary('nats-server'), ['-t', '-c', join(dir, 'nats.conf')], { env: { PATH: process.env.PATH, ...natsEnv }, encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS });
  t.equal(natsTest.status, 0, `nats-server -t accepts nats.conf with its container's environment: ${natsTest.stderr}${natsTest.stdout}`);
  t.match(natsConf, /^server_name: \$POD_NAME$/m, 'each node is named after its pod');
  const routes = [...(natsConf ?? '').matchAll(/nats-route:\/\/(\S+)/g)].map((m) => m[1]!).sort();
  t.same(routes, pods('nats', 6222), 'routes: every NATS pod by its headless DNS name');
  t.same(natsContainer.lifecycle?.preStop?.exec?.command, ['nats-server', '--signal', 'ldm=/var/run/nats/nats.pid'], 'lame-duck mode before the pod stops');
  t.match(natsConf, /^pid_file: \/var\/run\/nats\/nats\.pid$/m, 'the pid file the lame-duck signal reads');

  for (const w of workloads(manifests)) {
    for (const c of containersOf(w)) {
      const role = appRole(c);
      if (role !== 'worker' && role !== 'gateway') continue;
      const env = environmentOf(c, maps);
      const config = loadConfig(env);
      t.same(config.natsUrl.split(',').map((u) => u.trim()).sort(), pods('nats', 4222, 'nats://'), `${w.name}: SHOP_NATS_URL lists every NATS pod`);
      t.equal(config.streamReplicas, sets.get('nats')!.replicas, `${w.name}: streams replicated on every NATS node`);
      t.equal(config.placement, 'dynamic', `${w.name}: dynamic placement`);
      t.equal(config.partitions, 64, `${w.name}: 64 partitions`);
      t.equal(env.SHOP_NATS_USER, role, `${w.name}: NATS user ${role}`);
      t.equal(env.SHOP_NATS_PASSWORD, 'from-the-secret', `${w.name}: its NATS password from the Secret`);
      t.equal(adminPortOf(config, role), Number(w.template.metadata?.annotations?.['prometheus.io/port']), `${w.name}: scraped on its admin port`);
      if (role !== 'worker') continue;
      t.equal(env.SHOP_REDIS_USER, 'worker', 'worker: Redis user worker');
      t.equal(env.SHOP_REDIS_PASSWORD, 'from-the-secret', 'worker: its Redis password from the Secret');
      t.same((env.SHOP_REDIS_SENTINELS ?? '').split(',').sort(), pods('redis-sentinel', 26379), 'worker: SHOP_REDIS_SENTINELS lists every Sentinel');
      const monitor = /^sentinel monitor (\S+) \S+ 6379 (\d+)$/m.exec(maps.get('redis-scripts')?.['sentinel-start.sh'] ?? '');
      t.equal(env.SHOP_REDIS_MASTER_NAME, monitor?.[1], 'worker: the master name the Sentinels monitor');
      t.equal(monitor?.[2], '2', 'Sentinel quorum 2 of 3');
      t.equal(env.SHOP_REDIS_WAIT_REPLICAS, '1', 'worker: a commit waits for the replica');
      t.ok(Number(env.SHOP_REDIS_WAIT_REPLICAS) < sets.get('redis')!.replicas, 'there are that many replicas to wait for');
    }
  }

  for (const [name, data] of maps) {
    for (const [key, script] of Object.entries(data)) {
      if (!key.endsWith('.sh')) continue;
      const check = spawnSync('sh', ['-n'], { input: script, encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS });
      t.equal(check.status, 0, `${name}/${key} is valid sh: ${check.stderr}`);
    }
  }
});

/** Labels Prometheus puts on every series it scrapes: job, instance, and what the scrape configs add. */
function targetLabels(configs: { scrape_configs?: { static_configs?: { labels?: Record<string, string> }[]; relabel_configs?: { target_label?: string }[] }[] }[]): Set<string> {
  const labels = new Set(['job', 'instance']);
  for (const c of configs.flatMap((c) => c.scrape_configs ?? [])) {
    for (const s of c.static_configs ?? []) for (const l of Object.keys(s.labels ?? {})) labels.add(l);
    for (const r of c.relabel_configs ?? []) if (r.target_label && !r.target_label.startsWith('__')) labels.add(r.target_label);
  }
  return labels;
}

/** Every metric the worker and gateway processes export (as main.ts builds their registries), and Prometheus's `up`. */
function metricCatalogue(): MetricCatalogue {
  const worker = createWorkerMetrics(() => [], undefined, { partitions: 2, kinds: KINDS, streams: async () => [] });
  connectionMetrics(worker.registry, { nats: () => true, redis: () => true });
  const gateway = createGatewayMetrics(() => 0);
  connectionMetrics(gateway.registry, { nats: () => true });
  const metrics: MetricCatalogue = new Map([['up', { type: 'gauge', labels: [] }]]);
  for (const registry of [worker.registry, gateway.registry]) {
    for (const m of registry.getMetricsAsArray()) {
      metrics.set(m.name, { type: String(m.type), labels: [...((m as unknown as { labelNames?: readonly string[] }).labelNames ?? [])] });
    }
  }
  return metrics;
}

t.test('deploy/monitoring: the dashboard queries only metrics and labels the code exports', async (t) => {
  const metrics = metricCatalogue();
  const prometheus = ['prometheus.yml', 'prometheus-kubernetes.yml'].map((f) => parse(readFileSync(join(root, 'deploy/monitoring', f), 'utf8')));
  const options = { metrics, targetLabels: targetLabels(prometheus) };
  const dashboard = JSON.parse(readFileSync(join(root, 'deploy/monitoring/shop-dashboard.json'), 'utf8'));
  t.same(dashboardProblems(dashboard, options), [], 'every query reads');

  const used = dashboardMetrics(dashboard);
  for (const name of [
    'shop_saga_outcomes_total', 'shop_http_requests_total', 'shop_http_request_duration_seconds_bucket', 'shop_partition_lag',
    'shop_batch_commands_bucket', 'shop_batch_commands_sum', 'shop_batch_commands_count', 'shop_commit_duration_seconds_bucket',
    'shop_dead_letters_total', 'shop_partition_restarts_total', 'shop_partitions_owned', 'shop_http_in_flight',
  ]) {
    t.ok(used.has(name), `the dashboard shows ${name}`);
  }
  const exprs: string[] = JSON.stringify(dashboard).match(/"expr":"(?:[^"\\]|\\.)*"/g) ?? [];
  for (const q of ['0.5', '0.9', '0.99']) {
    t.ok(exprs.some((e) => e.includes(`histogram_quantile(${q}, sum by (le) (rate(shop_http_request_duration_seconds_bucket`)), `HTTP latency p${q.slice(2).padEnd(2, '0')}`);
  }
  t.ok(exprs.some((e) => e.includes('max(shop_partition_lag)')), 'the largest partition lag');

  t.same(promqlNames('histogram_quantile(0.99, sum by (le, route) (rate(shop_x_bucket{kind="a", b!~"c"}[$__rate_interval]))) / on (route) group_left sum(up)'), {
    selectors: [{ metric: 'shop_x_bucket', labels: ['kind', 'b'] }, { metric: 'up', labels: [] }],
    grouping: ['le', 'route', 'route'],
    functions: ['histogram_quantile', 'sum', 'rate', 'sum'],
  }, 'the PromQL reader finds metrics, matcher labels, grouping labels and functions');

  const breakages: [string, string, RegExp][] = [
    ['a metric the code does not export', 'shop_checkouts_total', /metric shop_checkouts_total is not exported/],
    ['a counter read as a histogram', 'sum(rate(shop_commands_total_bucket[5m]))', /metric shop_commands_total_bucket is not exported/],
    ['a histogram without its suffix', 'shop_commit_duration_seconds', /shop_commit_duration_seconds is a histogram; query shop_commit_duration_seconds_bucket/],
    ['a label the histogram lacks', 'sum by (le, status) (rate(shop_http_request_duration_seconds_bucket[5m]))', /groups by status, which none of its metrics has/],
    ['a matcher on a label the metric lacks', 'shop_partition_lag{worker="w"}', /shop_partition_lag has no label worker/],
    ['an unknown function', 'rated(shop_commands_total[5m])', /unknown function rated/],
  ];
  for (const [what, expr, expected] of breakages) {
    const copy = structuredClone(dashboard);
    copy.panels.find((p: { targets?: unknown[] }) => p.targets?.length).targets[0].expr = expr;
    t.match(dashboardProblems(copy, options).join('\n'), expected, `found: ${what}`);
  }
  const fixed = structuredClone(dashboard);
  fixed.panels.find((p: { targets?: unknown[] }) => p.targets?.length).datasource = { type: 'prometheus', uid: 'P1809F7CD0C75ACF3' };
  t.match(dashboardProblems(fixed, options).join('\n'), /not the variable \$\{datasource\}/, 'found: a panel bound to one datasource');
});

t.test('deploy/monitoring: the alert rules query only metrics and labels the code exports', async (t) => {
  const prometheus = ['prometheus.yml', 'prometheus-kubernetes.yml'].map((f) => parse(readFileSync(join(root, 'deploy/monitoring', f), 'utf8')));
  const options = { metrics: metricCatalogue(), targetLabels: targetLabels(prometheus) };
  // The rules as a dashboard of one panel each, so that the dashboard's check reads them.
  const asDashboard = (rules: { alert: string; expr: string }[]) => ({
    templating: { list: [{ name: 'datasource', type: 'datasource', query: 'prometheus' }] },
    panels: rules.map((r) => ({ title: r.alert, datasource: '${datasource}', targets: [{ expr: r.expr }] })),
  });
  const rules = alertRules();
  t.same(dashboardProblems(asDashboard(rules), options), [], 'every alert expression reads');
  const broken = rules.map((r) => (r.alert === 'ShopRedisUnreachable' ? { ...r, expr: r.expr.replace('shop_connection_up', 'shop_redis_up') } : r));
  t.match(dashboardProblems(asDashboard(broken), options).join('\n'), /ShopRedisUnreachable.*metric shop_redis_up is not exported/, 'found: an alert on a metric the code does not export');
});

/** Debian's docker-compose (1.29), or the command that installs it. */
function dockerCompose(): string | undefined {
  try {
    return findBinary('docker-compose');
  } catch {
    return undefined;
  }
}
const COMPOSE_MISSING =
  'docker-compose not found: install it with `sudo apt-get update && sudo apt-get install -y --no-install-recommends docker-compose` ' +
  '(`bash scripts/ensure-deps.sh test` does that when run as root)';

t.test('deploy/docker-compose.yml: docker-compose config accepts it with the credentials set, refuses it without, and Prometheus scrapes each app container', async (t) => {
  const composeFile = join(root, 'deploy/docker-compose.yml');
  const raw = parse(readFileSync(composeFile, 'utf8'), { merge: true }) as { services: Record<string, { environment?: Record<string, string>; command?: string | string[] }> };

  // Credentials only as ${VAR:?...} from the environment or deploy/.env, never literal.
  const credentials = new Set<string>();
  const problems: string[] = [];
  for (const [name, service] of Object.entries(raw.services)) {
    for (const [key, value] of Object.entries(service.environment ?? {})) {
      if (!SECRET_NAME.test(key)) continue;
      const m = /^\$\{([A-Z][A-Z0-9_]*):\?[^}]+\}$/.exec(String(value));
      if (m) credentials.add(m[1]!);
      else problems.push(`${name}: ${key} must be \${VARIABLE:?message}, got ${JSON.stringify(value)}`);
    }
    const command = [service.command ?? []].flat().join('\n');
    for (const line of literalCredentials(command)) problems.push(`${name}: its command sets a credential to a literal (${line})`);
  }
  t.same(problems, [], 'no literal credentials in the compose file');
  const example = readFileSync(join(root, 'deploy/.env.example'), 'utf8');
  const documented = [...example.matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1]!).sort();
  t.same([...credentials].sort(), documented, 'deploy/.env.example lists exactly the credentials the compose file needs');

  const bin = dockerCompose();
  if (!bin) {
    t.fail(COMPOSE_MISSING);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'deploy-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // An empty env file, so that a deploy/.env of the user's neither helps nor hinders.
  const envFile = join(dir, 'empty.env');
  writeFileSync(envFile, '');
  const compose = (env: Record<string, string>, ...args: string[]) =>
    spawnSync(bin, ['-f', composeFile, '--env-file', envFile, 'config', ...args], { env: { PATH: process.env.PATH, HOME: dir, ...env }, encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS });
  const dummies = Object.fromEntries([...credentials].map((v) => [v, `dummy-${v.toLowerCase().replaceAll('_', '-')}`]));

  const ok = compose(dummies);
  t.equal(ok.status, 0, `docker-compose config accepts deploy/docker-compose.yml: ${ok.stderr}`);
  const refused = compose({}, '-q');
  t.not(refused.status, 0, 'docker-compose config refuses it without the credentials');
  t.match(refused.stderr, new RegExp(`set (${[...credentials].join('|')})`), 'and says which variable to set');
  if (ok.status !== 0) return;

  // Every app container's admin port, as the app computes it from the resolved environment, is a Prometheus target.
  const resolved = parse(ok.stdout) as { services: Record<string, { image?: string; command?: string[]; environment?: Record<string, string | null> }> };
  const expected: string[] = [];
  for (const [name, service] of Object.entries(resolved.services)) {
    const role = appRole({ name, image: service.image, args: service.command });
    if (role !== 'worker' && role !== 'gateway') continue;
    const env = Object.fromEntries(Object.entries(service.environment ?? {}).map(([k, v]) => [k, v ?? '']));
    expected.push(`${name}:${adminPortOf(loadConfig(env), role)}`);
  }
  t.ok(expected.length >= 4, `the compose file has workers and gateways (${expected.join(', ')})`);
  const scrape = parse(readFileSync(join(root, 'deploy/monitoring/prometheus.yml'), 'utf8')) as {
    scrape_configs: { static_configs?: { targets: string[] }[]; dns_sd_configs?: { names: string[]; port: number }[] }[];
  };
  const targets = scrape.scrape_configs.flatMap((c) => [
    ...(c.static_configs ?? []).flatMap((s) => s.targets),
    ...(c.dns_sd_configs ?? []).flatMap((d) => d.names.map((n) => `${n}:${d.port}`)),
  ]);
  t.same(targets.sort(), expected.sort(), 'deploy/monitoring/prometheus.yml scrapes exactly the app containers, on their admin ports');

  // Its Prometheus reads deploy/monitoring/ as /etc/prometheus: prometheus.yml, and alerts.yml beside it.
  const prometheusService = resolved.services.prometheus as { command?: string[]; volumes?: ({ source?: string; target?: string } | string)[] } | undefined;
  t.ok(prometheusService, 'the compose file runs Prometheus');
  const mounts = (prometheusService?.volumes ?? []).map((v) => (typeof v === 'string' ? v : `${v.source}:${v.target}`));
  t.ok(mounts.some((m) => m.startsWith(`${join(root, 'deploy/monitoring')}:/etc/prometheus:`)), `deploy/monitoring is mounted at /etc/prometheus (${mounts.join(', ')})`);
  t.ok(prometheusService?.command?.includes('--config.file=/etc/prometheus/prometheus.yml'), 'with prometheus.yml as its config, which loads alerts.yml');
});

t.test('deploy/: every YAML file also parses as YAML 1.1, as kubectl and docker-compose read it', async (t) => {
  // The yaml package reads YAML 1.2 and accepts some plain scalars (a `?` in a flow mapping) that kubectl refuses.
  const yamlFiles = [...files.map((f) => join(k8sDir, f)), join(k8sDir, 'kustomization.yaml'), join(root, 'deploy/docker-compose.yml'), ...['prometheus.yml', 'prometheus-kubernetes.yml', 'alerts.yml', 'alerts.test.yml'].map((f) => join(root, 'deploy/monitoring', f))];
  const script = 'import sys, yaml\nfor f in sys.argv[1:]:\n    with open(f) as s:\n        list(yaml.safe_load_all(s))\n';
  const check = spawnSync('python3', ['-c', script, ...yamlFiles], { encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS });
  if (check.error || /No module named 'yaml'/.test(check.stderr ?? '')) {
    t.fail(`python3 with PyYAML is needed (Debian's docker-compose depends on it). ${COMPOSE_MISSING}`);
    return;
  }
  t.equal(check.status, 0, `PyYAML reads every file: ${check.stderr}`);

  const dir = mkdtempSync(join(tmpdir(), 'deploy-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'httpGet: { path: /healthz?js-server-only=true, port: monitor }\n');
  t.equal(parseAllDocuments(readFileSync(bad, 'utf8'))[0]!.errors.length, 0, 'the yaml package reads the unquoted ? ...');
  t.not(spawnSync('python3', ['-c', script, bad], { encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS }).status, 0, '... which PyYAML refuses');
});
