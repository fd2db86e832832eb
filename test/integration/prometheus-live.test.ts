/**
 * The dashboard and the alert rules against a live scrape: a real stack under the supervisor (nats-server,
 * redis-server, 2 workers, 1 gateway on free ports, temp data dir) under load, Debian's Prometheus started by
 * `npm run monitor`'s code scraping its admin ports with the shop's rules, then every query of
 * deploy/monitoring/shop-dashboard.json (Grafana's variables filled in) and every alert expression through
 * Prometheus's HTTP API. A panel query that returns no series fails, an expression Prometheus refuses fails, and every
 * rule must evaluate without error in Prometheus itself. Each panel and alert is printed with its series count (`#`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { envName, loadConfig } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { findBinary, spawnChild, stopChild } from '../../src/stack/processes.js';
import { freePort, freePortRange } from '../../src/stack/probes.js';
import { PROMETHEUS_MISSING, startMonitor } from '../../src/stack/monitor.js';
import { createSupervisor } from '../../src/stack/supervisor.js';
import { httpCall } from '../helpers/http.js';
import { alertRules, dashboardQueries, instantQuery, substituteVariables } from '../helpers/prometheus.js';
import { promqlNames } from '../helpers/promql.js';
import { waitFor } from '../helpers/servers.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'main.js');

/** Scrape and rule-evaluation interval of the test's Prometheus. */
const SCRAPE_S = 1;
/** How long the stack may take to answer, and Prometheus to see every target and every panel's series. */
const STACK_DEADLINE_MS = 60_000;
const SERIES_DEADLINE_MS = 120_000;
/** Concurrent clients of the load. */
const CLIENTS = 4;
/**
 * Metrics an alert reads that exist only while something is wrong: a partition in trouble. Every other metric of
 * the rules must have series in the live scrape (a misspelt name would evaluate to nothing, silently).
 */
const ONLY_WHEN_WRONG = new Set(['shop_partition_trouble']);

t.test('every dashboard panel and every alert expression answers on a live scrape of a loaded stack', async (t) => {
  try {
    findBinary('prometheus');
  } catch {
    return t.fail(PROMETHEUS_MISSING);
  }
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-prometheus-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const config = loadConfig(
    { SHOP_PROFILE: 'test' },
    {
      dataDir,
      natsPort: await freePort(),
      redisPort: await freePort(),
      httpPort: await freePort(),
      httpHost: '127.0.0.1',
      adminPort: await freePortRange(3),
      workerProcesses: 2,
      gatewayProcesses: 1,
      placement: 'dynamic',
      partitions: 4,
      startServers: true,
      streamMaxBytes: 64 * 1024 * 1024,
    },
  );
  const supervisor = createSupervisor(config, createLog('supervisor', 'warn'), { output: () => {} });
  t.teardown(() => supervisor.stop());
  await supervisor.start();
  const url = `http://127.0.0.1:${config.httpPort}`;
  const call = (method: 'GET' | 'POST', path: string) => httpCall(url, method, path);
  await waitFor(async () => (await call('POST', '/payment/create_user')).status === 200, { deadlineMs: STACK_DEADLINE_MS, what: 'the stack to take commands' });

  const prometheus = await startMonitor(config, { dir: join(dataDir, 'prometheus-test'), port: await freePort(), intervalS: SCRAPE_S });
  t.teardown(() => prometheus.stop());

  // The load: checkouts that succeed and some refused for stock or credit, top-ups, reads, bad requests (4xx).
  let loading = true;
  const counts = { requests: 0, paid: 0, refused: 0 };
  const client = async () => {
    while (loading) {
      const item = (await call('POST', '/stock/item/create/3')).body.item_id as string | undefined;
      const user = (await call('POST', '/payment/create_user')).body.user_id as string | undefined;
      if (!item || !user) continue;
      await call('POST', `/stock/add/${item}/2`);
      await call('POST', `/payment/add_funds/${user}/10`);
      for (const quantity of [1, 1, 3]) {
        const order = (await call('POST', `/orders/create/${user}`)).body.order_id as string | undefined;
        if (!order) continue;
        await call('POST', `/orders/addItem/${order}/${item}/${quantity}`);
        const checkout = await call('POST', `/orders/checkout/${order}`);
        if (checkout.status === 200) counts.paid++;
        else counts.refused++;
        await call('GET', `/orders/find/${order}`);
      }
      await call('GET', `/stock/find/${item}`);
      await call('POST', `/stock/add/${item}/not-a-number`);
      counts.requests += 14;
    }
  };
  const load = Promise.all(Array.from({ length: CLIENTS }, client));
  t.teardown(async () => {
    loading = false;
    await load.catch(() => {});
  });

  const panels = dashboardQueries().map((q) => ({ ...q, query: substituteVariables(q.expr, SCRAPE_S) }));
  const seriesOf = async (expr: string) => (await instantQuery(prometheus.url, expr)).series.length;
  let empty: string[] = [];
  await waitFor(
    async () => {
      const targets = (await (await fetch(`${prometheus.url}/api/v1/targets`)).json()) as { data: { activeTargets: { health: string }[] } };
      if (targets.data.activeTargets.filter((x) => x.health === 'up').length !== 3) return false;
      empty = [];
      for (const p of panels) if ((await seriesOf(p.query)) === 0) empty.push(`${p.panel} [${p.legend}]: ${p.query}`);
      return empty.length === 0 && counts.paid > 0 && counts.refused > 0;
    },
    { deadlineMs: SERIES_DEADLINE_MS, intervalMs: 1000, what: 'the 3 targets to be up and every panel to have series' },
  ).catch((err: Error) => {
    err.message += `; still empty: ${empty.join('; ') || 'none (were the targets up?)'}`;
    throw err;
  });
  loading = false;
  await load;
  t.comment(`load: ${counts.requests} requests, ${counts.paid} checkouts paid, ${counts.refused} refused`);

  for (const p of panels) {
    const n = await seriesOf(p.query);
    t.comment(`panel "${p.panel}" [${p.legend}]: ${n} series`);
    t.ok(n > 0, `panel "${p.panel}" [${p.legend}] returns series: ${p.query}`);
  }

  const rules = alertRules();
  for (const rule of rules) {
    const n = await seriesOf(rule.expr);
    const read: string[] = [];
    for (const metric of new Set(promqlNames(rule.expr).selectors.map((s) => s.metric))) {
      const m = (await instantQuery(prometheus.url, `count(${metric})`)).series[0]?.value[1] ?? '0';
      read.push(`${metric} ${m}`);
      if (!ONLY_WHEN_WRONG.has(metric)) t.ok(Number(m) > 0, `alert ${rule.alert}: ${metric} has series in the scrape`);
    }
    t.comment(`alert ${rule.alert}: ${n} series match (firing or pending) now; it reads ${read.join(', ')} series`);
  }

  // Prometheus evaluates the rules itself: each must have run, without error.
  let health: { name: string; health: string; lastError?: string }[] = [];
  await waitFor(
    async () => {
      const body = (await (await fetch(`${prometheus.url}/api/v1/rules?type=alert`)).json()) as { data: { groups: { rules: { name: string; health: string; lastError?: string }[] }[] } };
      health = body.data.groups.flatMap((g) => g.rules);
      return health.length === rules.length && health.every((r) => r.health !== 'unknown');
    },
    { deadlineMs: SERIES_DEADLINE_MS, intervalMs: 500, what: 'Prometheus to evaluate every rule' },
  );
  t.same(health.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError ?? ''}`), [], 'every rule evaluates without error in Prometheus');
  t.same(health.map((r) => r.name).sort(), rules.map((r) => r.alert).sort(), 'Prometheus loaded every rule of alerts.yml');

  // `npm run monitor` itself (main.js monitor) with the stack's settings: its URL, the stack's admin ports, Ctrl-C.
  const monitorPort = await freePort();
  const env = { PATH: process.env.PATH ?? '', SHOP_LOG_FORMAT: 'json', ...Object.fromEntries(Object.entries({ dataDir, adminPort: config.adminPort, workerProcesses: 2, gatewayProcesses: 1, monitorPort }).map(([k, v]) => [envName(k), String(v)])) };
  const monitor = spawnChild('monitor', process.execPath, { args: [MAIN, 'monitor'], env });
  t.teardown(() => stopChild(monitor, 10_000));
  const monitorUrl = `http://127.0.0.1:${monitorPort}`;
  await waitFor(() => monitor.tail().some((l) => l.includes(`Prometheus: ${monitorUrl}`)), { deadlineMs: STACK_DEADLINE_MS, what: `npm run monitor to log its URL (${monitor.tail().join(' ')})` });
  // Its targets appear once the scrape manager has read the config, shortly after it is ready.
  let scraped: string[] = [];
  await waitFor(
    async () => {
      const active = (await (await fetch(`${monitorUrl}/api/v1/targets`)).json()) as { data: { activeTargets: { scrapeUrl: string }[] } };
      scraped = active.data.activeTargets.map((x) => x.scrapeUrl).sort();
      return scraped.length >= 3;
    },
    { deadlineMs: STACK_DEADLINE_MS, what: 'npm run monitor to list the 3 targets of the stack' },
  );
  const admin = (i: number) => `http://${config.adminHost}:${config.adminPort + i}/metrics`;
  t.same(scraped, [0, 1, 2].map(admin).sort(), 'npm run monitor scrapes the stack\'s workers and gateway on their admin ports');
  monitor.process.kill('SIGINT');
  t.same(await monitor.exited, { code: 0, signal: null }, 'and stops on Ctrl-C');
  t.ok(monitor.tail().some((l) => /prometheus stopped/.test(l)), 'with Prometheus');
});
