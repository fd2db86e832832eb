/**
 * `--start`: the local stack of `npm start` (nats-server, redis-server, workers, gateways, under the project's
 * supervisor), on free ports with a fresh temporary data directory, its output in a log file. Ready when the
 * API answers a read with a decision (400 not_found), not merely when the port accepts connections.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { loadConfig } from '../src/config.js';
import { createLog } from '../src/log.js';
import { reapDirOnExit } from '../src/stack/processes.js';
import { freePort, freePortRange, waitFor } from '../src/stack/probes.js';
import { readLocalCredentials } from '../src/stack/secrets.js';
import { createSupervisor } from '../src/stack/supervisor.js';
import { readCommitCounts, type CommitCounts } from './commit-counts.js';
import { call } from './http.js';

/** How long the workers may take to own their partitions after the gateway listens. */
const API_READY_DEADLINE_MS = 60_000;

export interface Stack {
  url: string;
  dataDir: string;
  /** The ordered stop (gateways, workers, redis, nats), then the data directory is removed. */
  stop(): Promise<void>;
  /** SIGKILL to everything at once (a second Ctrl-C). */
  kill(): void;
  /** Redis's counts of commits and partition batches so far (bench/commit-counts.ts), from the primary it started with. */
  commitCounts(): Promise<CommitCounts>;
}

export async function startStack(logFile: string, note: (line: string) => void): Promise<Stack> {
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-bench-'));
  reapDirOnExit(dataDir);
  // How many nodes of each server the profile runs (SHOP_PROFILE=cluster: 3 NATS, a Redis primary with a replica,
  // 3 Sentinels), each block on consecutive ports.
  const shape = loadConfig(process.env);
  const [natsPort, natsClusterPort, redisPort, sentinelPort, httpPort] = [
    await freePortRange(shape.natsNodes),
    await freePortRange(shape.natsNodes),
    await freePortRange(1 + shape.redisReplicas),
    await freePortRange(Math.max(1, shape.sentinelNodes)),
    await freePort(),
  ];
  // Through the environment rather than loadConfig's overrides: settings a version of the stack does not know
  // (SHOP_ADMIN_PORT) are ignored there, not refused. Admin port 0: every process its own free port, so a stack
  // started by `npm start` can keep running next to this one.
  const config = loadConfig({
    ...process.env,
    SHOP_DATA_DIR: dataDir,
    SHOP_NATS_PORT: String(natsPort),
    SHOP_NATS_CLUSTER_PORT: String(natsClusterPort),
    SHOP_REDIS_PORT: String(redisPort),
    SHOP_SENTINEL_PORT: String(sentinelPort),
    SHOP_HTTP_PORT: String(httpPort),
    SHOP_HTTP_HOST: '127.0.0.1',
    SHOP_ADMIN_PORT: '0',
  });
  const logStream = createWriteStream(logFile, { flags: 'a' });
  const log = createLog('supervisor', config.logLevel, (line) => logStream.write(line));
  const supervisor = createSupervisor(config, log, { output: (name, line) => logStream.write(`${name}| ${line}\n`) });
  const url = `http://127.0.0.1:${config.httpPort}`;

  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await supervisor.stop();
      await new Promise<void>((resolve) => logStream.end(resolve));
      await rm(dataDir, { recursive: true, force: true, maxRetries: 5 });
      reapDirOnExit(dataDir, false);
    })());

  const nodes = (n: number) => (n > 1 ? ` x${n}` : '');
  note(
    `start: the local stack on ${url} (nats :${config.natsPort}${nodes(config.natsNodes)}, redis :${config.redisPort}${nodes(1 + config.redisReplicas)}` +
      `${config.sentinelNodes > 0 ? `, Sentinels :${config.sentinelPort}${nodes(config.sentinelNodes)}` : ''}, data ${dataDir}; output in ${logFile})`,
  );
  const t = performance.now();
  try {
    await supervisor.start();
    const probe = new Pool(url, { connections: 1 });
    try {
      await waitFor(async () => (await call(probe, 'GET', '/stock/find/bench-ready-probe', 5_000)).status === 400, {
        deadlineMs: API_READY_DEADLINE_MS,
        what: `the API on ${url} to answer GET /stock/find with 400 not_found (see ${logFile})`,
      });
    } finally {
      await probe.close();
    }
  } catch (err) {
    await stop();
    throw err;
  }
  note(`start: ready in ${Math.round(performance.now() - t)} ms`);
  const commitCounts = () => {
    const login = readLocalCredentials(config)?.redis;
    return login ? readCommitCounts(config.redisPort, login) : Promise.reject(new Error(`no credentials in ${dataDir}`));
  };
  return { url, dataDir, stop, kill: () => supervisor.kill(), commitCounts };
}
