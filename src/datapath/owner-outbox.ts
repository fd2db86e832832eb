import type { NatsConnection } from 'nats';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import type { Names } from '../protocol.js';
import type { Mux } from '../transport/mux.js';
import type { Courier } from './courier.js';
import { decodeEntry, PartitionOutbox } from './outbox.js';
import type { PartitionStore } from './store.js';

/** Longest a runner that lets go waits for its outbox to finish sending. */
const OUTBOX_DRAIN_MAX_MS = 5000;
/**
 * Most committed batches whose outbox is still being delivered (dead letters not yet stored) before the batch loop
 * stops taking this partition's clients' commands. Saga parcels from other partitions are taken whatever the outbox
 * holds (they may be what the other side waits for).
 */
const OUTBOX_BATCHES_INFLIGHT_MAX = 64;

export interface OwnerOutboxDeps {
  nc: NatsConnection;
  mux: Mux;
  courier: Courier;
  store: PartitionStore;
  names: Names;
  kind: Kind;
  partition: number;
  config: Pick<Config, 'retryBackoffMs'>;
  log: Log;
  /** The runner let go of the partition without stopping: the next owner re-sends what is left. */
  abandoned: () => boolean;
  /** A batch's outbox is done: the batch loop may take clients' commands again. */
  wake: () => void;
}

/** The outbox of the partition's new owner, sending again what the last one left unsent (`left`: field, entry as stored). */
export function openOwnerOutbox(deps: OwnerOutboxDeps, left: readonly [string, Uint8Array][]): PartitionOutbox {
  const { nc, mux, courier, store, names, kind, partition, config, log } = deps;
  const outbox = new PartitionOutbox({
    nc,
    mux,
    courier,
    log,
    deadLetterSubject: names.deadLetter(kind, partition),
    name: `${kind}.${partition}`,
    clear: (fields) => store.clearOutbox(fields),
    abandoned: deps.abandoned,
    retryBackoffMs: config.retryBackoffMs,
    onDone: () => deps.wake(),
  });
  for (const [field, bytes] of left) outbox.send(field, decodeEntry(bytes));
  return outbox;
}

/** Room for the outbox of one more batch of clients' commands (see OUTBOX_BATCHES_INFLIGHT_MAX). */
export const roomInOutbox = (outbox: PartitionOutbox | null): boolean => (outbox?.pending ?? 0) < OUTBOX_BATCHES_INFLIGHT_MAX;

/** Lets the outbox finish, within a bound: what is still unsent then stays in Redis for the next owner to send. */
export async function closeOwnerOutbox(outbox: PartitionOutbox, log: Log): Promise<void> {
  if (!(await outbox.drain(OUTBOX_DRAIN_MAX_MS))) log.warn('letting go with outbox messages undelivered; the next owner sends them', { batches: outbox.pending });
  outbox.close();
}
