import type { Kind } from './config.js';

/** FNV-1a 32-bit over the UTF-16 code units of the id: stable across processes, versions and restarts. */
export function fnv1a(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * A partition's name across kinds, `kind.partition`: how the batch loop keys its participants, a share the commands
 * it sends elsewhere, and the courier and the reminders the partitions that moved.
 */
export const participantKey = (kind: Kind, partition: number) => `${kind}.${partition}`;

export function partitionOf(id: string, partitions: number): number {
  return fnv1a(id) % partitions;
}

/**
 * Most ids one batch_init command covers. batch_init of n ids goes to every partition as ceil(n / BATCH_INIT_CHUNK)
 * commands, each partition creating its share of each range, so no single command blocks its worker for long.
 */
export const BATCH_INIT_CHUNK = 16_384;

/**
 * Ranges [from, to) covering ids "0".."n-1", at most BATCH_INIT_CHUNK ids each, made one at a time as they are
 * taken: n comes from a client, so nothing here may be proportional to it at once.
 */
export function* batchInitRanges(n: number): Generator<{ from: number; to: number }> {
  for (let from = 0; from < n; from += BATCH_INIT_CHUNK) yield { from, to: Math.min(n, from + BATCH_INIT_CHUNK) };
}

/** Ids "from".."to-1" that hash to this partition: batch_init goes to every partition and each creates its share. */
export function* ownShare({ from, to }: { from: number; to: number }, ctx: { partition: number; partitions: number }): Generator<string> {
  for (let i = from; i < to; i++) {
    const id = String(i);
    if (partitionOf(id, ctx.partitions) === ctx.partition) yield id;
  }
}

/**
 * Draws made at most for an id that hashes to a wanted partition, per partition of the kind: a draw lands there with
 * probability 1 / partitions, so 32 × partitions draws all miss with probability e^-32. Bounded all the same, so
 * that a draw that can never land (a caller's mistake) costs a bounded time, not a hang.
 */
export const PLACED_DRAWS_PER_PARTITION = 32;

/**
 * An id from `draw` that hashes to `partition`, or (every draw missed, see PLACED_DRAWS_PER_PARTITION) the last one
 * drawn. What co-locates an order with its user: the order is created on its user's payment partition number, and
 * placement puts the same partition number of every kind on the same worker, so a checkout's debit never leaves
 * the worker (docs/architecture.md, "Co-location"). The id still looks like any other: the draws are uuids.
 */
export function drawIn(partition: number, partitions: number, draw: () => string): string {
  let id = draw();
  for (let n = 1; n < PLACED_DRAWS_PER_PARTITION * partitions && partitionOf(id, partitions) !== partition; n++) id = draw();
  return id;
}
