import { DiscardPolicy, RetentionPolicy, StorageType, nanos, type JetStreamManager, type StreamConfig } from 'nats';
import { setTimeout as delay } from 'node:timers/promises';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { names, STREAM_MESSAGE_BYTES_MAX } from '../protocol.js';

/**
 * How long a process keeps retrying the JetStream calls it needs to start (streams, buckets, watches). A JetStream
 * cluster that lost a node answers none of them while it elects new leaders (its meta leader, or a stream's):
 * measured at 4.4 to 8.8 s on nats-server 2.9 (docs/architecture.md, "NATS cluster").
 */
export const JETSTREAM_START_DEADLINE_MS = 60_000;
/** Pause between those attempts. */
const JETSTREAM_RETRY_MS = 250;

/**
 * Runs `fn` until it succeeds, retrying every JETSTREAM_RETRY_MS up to JETSTREAM_START_DEADLINE_MS (then throws its
 * last error): a process that starts while JetStream elects a leader waits for it instead of exiting. Logs each
 * different error once.
 */
export async function untilJetStream<T>(what: string, fn: () => Promise<T>, log: Log, deadlineMs = JETSTREAM_START_DEADLINE_MS): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  let logged = '';
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      const message = (err as Error).message;
      if (Date.now() >= deadline) throw new Error(`could not ${what} within ${deadlineMs} ms: ${message}`);
      if (message !== logged) log.warn(`could not ${what} yet (JetStream electing a leader?); retrying`, { error: message });
      logged = message;
      await delay(JETSTREAM_RETRY_MS);
    }
  }
}

export function streamConfig(config: Config, kind: Kind): Partial<StreamConfig> & { name: string } {
  const n = names(config.streamPrefix);
  return {
    name: n.stream(kind),
    // The subjects of each partition that exists, not a wildcard: a command for a partition the shop does not have is
    // refused at publish (no stream takes it) instead of filling the stream for good. Its commands, and its trim
    // marks (marks.ts).
    subjects: Array.from({ length: config.partitions }, (_, p) => [n.cmd(kind, p), n.mark(kind, p)]).flat(),
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    // Past the size limit new publishes are refused (the gateway answers 503); an unapplied command is never dropped.
    discard: DiscardPolicy.New,
    max_bytes: config.streamMaxBytes,
    // Refused at publish: nothing longer is a command (checked again before decoding, datapath/batch-loop.ts).
    max_msg_size: STREAM_MESSAGE_BYTES_MAX,
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
