/**
 * The worker role: checks the cluster's layout and streams, opens the kit its runners share (worker-kit.ts), and
 * runs its partitions under static placement (here) or dynamic placement (dynamic-worker.ts).
 */
import { randomBytes } from 'node:crypto';
import type { Registry } from 'prom-client';
import type { Config, Kind } from '../config.js';
import { ensureStreams, untilJetStream } from '../datapath/streams.js';
import { claimLayout, LayoutMismatchError } from '../transport/layout.js';
import { startDynamicWorker } from './dynamic-worker.js';
import type { WorkerEnd } from './handoff.js';
import { openControlBucket } from './membership.js';
import { closeKit, newRunner, openKit, partitionStore, troubled, type Kit, type Worker, type WorkerOptions } from './worker-kit.js';

export type { WorkerEnd } from './handoff.js';
export type { Worker, WorkerOptions } from './worker-kit.js';

/** Static placement: partition p of every kind belongs to worker p % workerProcesses. */
export function ownedPartitions(config: Config): { kind: Kind; partition: number }[] {
  const owned: { kind: Kind; partition: number }[] = [];
  for (const kind of config.kinds) {
    for (let p = 0; p < config.partitions; p++) {
      if (p % config.workerProcesses === config.workerIndex) owned.push({ kind, partition: p });
    }
  }
  return owned;
}

/**
 * A shard worker: hosts the partitions its placement gives it, each run by its own single-writer loop.
 * Static placement (config.placement 'static', or an explicit `partitions` list): a fixed set, taken at start.
 * Dynamic: see startDynamicWorker.
 */
export async function startWorker(opts: WorkerOptions): Promise<Worker> {
  const { nc, config } = opts;
  const dynamic = !opts.partitions && config.placement === 'dynamic';
  const id = dynamic ? `worker-${config.workerIndex}-${randomBytes(3).toString('hex')}` : `worker-${config.workerIndex}`;
  // Every line of the worker, its partitions and its controller names it: `shopctl status` shows the same id.
  const log = opts.log.child({ workerId: id });
  const jsm = await untilJetStream('reach JetStream', () => nc.jetstreamManager(), log);
  const js = nc.jetstream();
  // The first worker of a cluster writes its layout; one whose partitions differ from the cluster's refuses to start,
  // before it changes anything (the streams' settings are the next step).
  const control = await untilJetStream('open the control bucket', () => openControlBucket(js, config), log);
  const layout = await untilJetStream('read the cluster layout', () => claimLayout(control, config, `worker ${id}`, log).catch((err: unknown) => (err instanceof LayoutMismatchError ? err : Promise.reject(err))), log);
  if (layout instanceof LayoutMismatchError) throw layout;
  await untilJetStream('create the streams', () => ensureStreams(jsm, config), log);
  const { kit, registry, bind, follow } = openKit(opts, id, log, js, jsm);
  const worker = dynamic
    ? await startDynamicWorker(kit, id, opts, registry, follow)
    : await startStaticWorker(kit, id, opts.partitions ?? ownedPartitions(config), registry);
  bind(worker);
  return worker;
}

async function startStaticWorker(kit: Kit, id: string, partitions: { kind: Kind; partition: number }[], registry: Registry): Promise<Worker> {
  const { config, log, redis, courier } = kit;
  const runners = partitions.map(({ kind, partition }) =>
    newRunner(kit, kind, partition, partitionStore(redis, config, kind, partition), (r) => log.warn('partition lost to a newer owner', { kind: r.kind, partition: r.partition })),
  );
  await Promise.all(runners.map((r) => r.start()));
  courier.announce();
  log.info('serving', { partitions: runners.map((r) => `${r.kind}-${r.partition}`).join(' ') });
  return {
    id,
    runners,
    runner: (kind, partition) => runners.find((r) => r.kind === kind && r.partition === partition),
    registry,
    ended: new Promise<WorkerEnd>(() => {}),
    ready() {
      const trouble = troubled(runners);
      if (trouble) return { ok: false, detail: trouble };
      const down = runners.filter((r) => r.state !== 'running');
      return down.length === 0 ? { ok: true } : { ok: false, detail: `not running: ${down.map((r) => `${r.kind}.${r.partition}`).join(' ')}` };
    },
    async close() {
      await Promise.all(runners.map((r) => r.stop()));
      closeKit(kit);
    },
  };
}
