/**
 * `npm run monitor`: Debian's Prometheus beside the local stack, scraping every worker's and gateway's admin port
 * with the shop's alert rules (deploy/monitoring/alerts.yml), its data under `<dataDir>/prometheus/`. The same
 * start serves the live test of the dashboard and the rules (test/integration/prometheus-live.test.ts).
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, envName, type Config } from '../config.js';
import type { Log } from '../log.js';
import { abortOnExit, findBinary, MissingBinaryError, spawnChild, stopChild, type Child } from './processes.js';
import { waitFor } from './probes.js';

/** How long Prometheus may take to answer /-/ready after it was spawned (it replays its WAL first). */
const PROMETHEUS_READY_DEADLINE_MS = 60_000;
/** How long Prometheus may take to stop (it writes its head block) before it is killed. */
const PROMETHEUS_STOP_GRACE_MS = 10_000;
/** Scrape and rule-evaluation interval of `npm run monitor`, as in deploy/monitoring/prometheus.yml. */
export const MONITOR_SCRAPE_INTERVAL_S = 5;

export const PROMETHEUS_MISSING =
  'prometheus not found: install Debian\'s package with `sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus` ' +
  '(`bash scripts/ensure-deps.sh test` does that when run as root)';

/** deploy/monitoring/alerts.yml, from both src/ and dist/src/. */
export function alertRulesFile(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const file = resolve(here, up, 'deploy/monitoring/alerts.yml');
    if (existsSync(file)) return file;
  }
  throw new Error(`deploy/monitoring/alerts.yml not found above ${here}`);
}

/** The admin HTTP addresses of the stack's workers and gateways (host:port), from its settings. */
export function adminTargets(config: Config): { workers: string[]; gateways: string[] } {
  if (config.adminPort === 0) {
    throw new ConfigError(`the monitor scrapes the admin ports adminPort + i, but adminPort (${envName('adminPort')}) is 0 (any free port): give the stack and the monitor the same fixed adminPort`);
  }
  const at = (i: number) => `${config.adminHost}:${config.adminPort + i}`;
  return {
    workers: Array.from({ length: config.workerProcesses }, (_, i) => at(i)),
    gateways: Array.from({ length: config.gatewayProcesses }, (_, j) => at(config.workerProcesses + j)),
  };
}

/**
 * A Prometheus config (JSON, which is YAML) with the jobs of deploy/monitoring/prometheus.yml, `shop-worker` and
 * `shop-gateway` (the alert rules select `job=~"shop-.*"`), and the rules file.
 */
export function prometheusConfig({ workers, gateways, rulesFile, intervalS }: { workers: string[]; gateways: string[]; rulesFile: string; intervalS: number }): string {
  const job = (name: string, component: string, targets: string[]) => ({ job_name: name, static_configs: [{ targets, labels: { component } }] });
  return JSON.stringify(
    {
      global: { scrape_interval: `${intervalS}s`, evaluation_interval: `${intervalS}s` },
      rule_files: [rulesFile],
      scrape_configs: [job('shop-worker', 'worker', workers), job('shop-gateway', 'gateway', gateways)],
    },
    null,
    2,
  );
}

export interface Prometheus {
  /** http://host:port */
  readonly url: string;
  readonly child: Child;
  stop(): Promise<void>;
}

export interface MonitorOptions {
  /** Where the config and the TSDB go (default `<dataDir>/prometheus`). */
  dir?: string;
  host?: string;
  port: number;
  intervalS?: number;
  log?: Log;
}

/** Starts Prometheus scraping the stack `config` describes; resolves once it answers /-/ready. */
export async function startMonitor(config: Config, { dir = join(config.dataDir, 'prometheus'), host = '127.0.0.1', port, intervalS = MONITOR_SCRAPE_INTERVAL_S, log }: MonitorOptions): Promise<Prometheus> {
  let binary: string;
  try {
    binary = findBinary('prometheus');
  } catch (err) {
    throw err instanceof MissingBinaryError ? new MissingBinaryError(PROMETHEUS_MISSING) : err;
  }
  await mkdir(join(dir, 'data'), { recursive: true, mode: 0o700 });
  const configFile = join(dir, 'prometheus.yml');
  await writeFile(configFile, prometheusConfig({ ...adminTargets(config), rulesFile: alertRulesFile(), intervalS }));
  const url = `http://${host}:${port}`;
  const child = spawnChild('prometheus', binary, {
    args: [`--config.file=${configFile}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=${host}:${port}`],
    onLine: (line) => log?.debug(line),
  });
  const exited = abortOnExit(child, `prometheus on port ${port}`);
  const stop = async () => {
    await stopChild(child, PROMETHEUS_STOP_GRACE_MS);
  };
  try {
    await waitFor(async () => (await fetch(`${url}/-/ready`)).ok, { deadlineMs: PROMETHEUS_READY_DEADLINE_MS, what: `prometheus on port ${port} to be ready`, signal: exited.signal });
  } catch (err) {
    await stop();
    if (err instanceof Error) err.message += `; its last output:\n${child.tail().slice(-10).join('\n')}`;
    throw err;
  }
  return { url, child, stop };
}

/** `npm run monitor`: Prometheus until Ctrl-C. */
export async function runMonitor(config: Config, log: Log): Promise<void> {
  const prometheus = await startMonitor(config, { port: config.monitorPort, log });
  const { workers, gateways } = adminTargets(config);
  log.info(`Prometheus: ${prometheus.url} (alerts: ${prometheus.url}/alerts, targets: ${prometheus.url}/targets); scraping workers ${workers.join(' ')} and gateways ${gateways.join(' ')}; data in ${join(config.dataDir, 'prometheus')}`);
  await new Promise<void>((done) => {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => done());
    void prometheus.child.exited.then(() => done());
  });
  await prometheus.stop();
  const exit = prometheus.child.exit();
  log.info(`prometheus stopped (${exit?.signal ?? exit?.code})`);
}
