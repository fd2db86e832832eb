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

/** Creates (or brings up to date) one stream per actor kind. Idempotent: every worker calls it at start (gateways may not: their NATS user has no JetStream API rights). */
export async function ensureStreams(jsm: JetStreamManager, config: Config): Promise<void> {
  for (const kind of config.kinds) {
    const wanted = streamConfig(config, kind);
    try {
      await jsm.streams.add(wanted);
    } catch (err) {
      if (!/already in use/i.test((err as Error).message)) throw err;
      await jsm.streams.update(wanted.name, wanted);
    }
  }
}
