import { DiscardPolicy, RetentionPolicy, StorageType, nanos, type JetStreamManager, type StreamConfig } from 'nats';
import type { Config, Kind } from '../config.js';
import { names } from '../protocol.js';

export function streamConfig(config: Config, kind: Kind): Partial<StreamConfig> & { name: string } {
  const n = names(config.streamPrefix);
  return {
    name: n.stream(kind),
    subjects: [n.cmd(kind, 0).replace(/\.0$/, '.*')],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    // Past the size limit new publishes are refused (the gateway answers 503); an unapplied command is never dropped.
    discard: DiscardPolicy.New,
    max_bytes: config.streamMaxBytes,
    duplicate_window: nanos(config.duplicateWindowMs),
    num_replicas: config.streamReplicas,
  };
}

/** Most bytes and longest time dead letters are kept: they are for diagnosis, so the oldest go first. */
const DEAD_LETTER_MAX_BYTES = 256 * 1024 * 1024;
const DEAD_LETTER_MAX_AGE_MS = 30 * 24 * 3600 * 1000;

/** The stream of dead letters (copies of messages a partition could not apply), all kinds and partitions. */
export function deadLetterStreamConfig(config: Config): Partial<StreamConfig> & { name: string } {
  const n = names(config.streamPrefix);
  return {
    name: n.deadLetterStream,
    subjects: [n.deadLetter('stock', 0).replace(/stock\.0$/, '>')],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_bytes: Math.min(DEAD_LETTER_MAX_BYTES, config.streamMaxBytes),
    max_age: nanos(DEAD_LETTER_MAX_AGE_MS),
    duplicate_window: nanos(config.duplicateWindowMs),
    num_replicas: config.streamReplicas,
  };
}

/** Creates (or brings up to date) one stream per actor kind, and the dead-letter stream. Idempotent: every worker calls it at start (gateways may not: their NATS user has no JetStream API rights). */
export async function ensureStreams(jsm: JetStreamManager, config: Config): Promise<void> {
  for (const wanted of [...config.kinds.map((kind) => streamConfig(config, kind)), deadLetterStreamConfig(config)]) {
    try {
      await jsm.streams.add(wanted);
    } catch (err) {
      if (!/already in use/i.test((err as Error).message)) throw err;
      await jsm.streams.update(wanted.name, wanted);
    }
  }
}
