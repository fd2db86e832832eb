import type { Redis } from 'ioredis';
import type { NatsConnection } from 'nats';
import { actorOf } from '../actors/index.js';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { randomBytes } from 'node:crypto';
import { names } from '../protocol.js';
import { Mux } from './mux.js';
import { PartitionRunner } from './partition.js';
import { createPartitionStore } from './store.js';
import { ensureStreams } from './streams.js';

export interface Worker {
  readonly runners: readonly PartitionRunner[];
  close(): Promise<void>;
}

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

/** A shard worker: hosts the partitions its placement gives it, each run by its own single-writer loop. */
export async function startWorker({
  nc,
  redis,
  config,
  log,
  partitions = ownedPartitions(config),
}: {
  nc: NatsConnection;
  redis: Redis;
  config: Config;
  log: Log;
  partitions?: { kind: Kind; partition: number }[];
}): Promise<Worker> {
  const jsm = await nc.jetstreamManager();
  await ensureStreams(jsm, config);
  const js = nc.jetstream();
  const mux = new Mux(nc, names(config.streamPrefix).inbox(`w${randomBytes(6).toString('hex')}`));
  const runners = partitions.map(({ kind, partition }) => {
    const actor = actorOf(kind);
    return new PartitionRunner({
      nc,
      js,
      jsm,
      mux,
      config,
      log,
      actor,
      partition,
      store: createPartitionStore(redis, config.redisPrefix, kind, partition, actor.tables),
      onFenced: (r) => log.warn('partition lost to a newer owner', { kind: r.kind, partition: r.partition }),
    });
  });
  await Promise.all(runners.map((r) => r.start()));
  log.info('serving', { partitions: runners.map((r) => `${r.kind}-${r.partition}`).join(' ') });
  return {
    runners,
    async close() {
      await Promise.all(runners.map((r) => r.stop()));
      mux.close(new Error('worker closed'));
    },
  };
}
