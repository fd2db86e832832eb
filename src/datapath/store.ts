/**
 * The Redis side of one partition (its keys and scripts: store-scripts.ts): takes it at an epoch, loads it, commits
 * its batches (through its connection's commit group, commit-group.ts), records its trim marks and its attempts.
 */
import type { Redis } from 'ioredis';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { decode } from '../codec.js';
import type { Kind } from '../config.js';
import { commitGroupOf, type PreparedBatch } from './commit-group.js';
import type { Tables } from './draft.js';
import { compareFields } from './outbox.js';
import { scriptRunner, type ReplicationSettings, type ScriptFn } from './script-runner.js';
import { ACQUIRE_LUA, ATTEMPT_LUA, commitArgs, partitionKeys, RECORD_MARK_LUA, WITHDRAW_LUA, type BatchWrite, type PartitionKeys } from './store-scripts.js';

/** The partition is held at a newer epoch than the one asked for: this process must not own it. */
export class StaleEpochError extends Error {
  override name = 'StaleEpochError';
  constructor(
    readonly wanted: number,
    readonly stored: number,
  ) {
    super(`epoch ${wanted} is stale: the partition is held at epoch ${stored}`);
  }
}

export interface Loaded {
  cursor: number;
  /** Commits of the partition so far (the commit script checks the next one against it). */
  commits: number;
  /** Stream sequence of the newest trim mark recorded (marks.ts), 0 for none. */
  mark: number;
  /** Commands delivered to the partition from within its worker so far (they number as -1, -2, ...). */
  local: number;
  tables: Tables;
  /** Pending outbox entries (encoded, see outbox.ts), oldest first, with their field names. */
  outbox: [string, Uint8Array][];
}

export interface PartitionStore {
  readonly keys: PartitionKeys;
  /**
   * Takes the partition, fencing every older owner: at `epoch` (from the placement; throws StaleEpochError when
   * a newer one is stored), or without one by raising the stored epoch by one. Returns the epoch now held.
   */
  acquire(epoch?: number): Promise<number>;
  load(): Promise<Loaded>;
  /** One batch, ready to be committed alone (`commit`) or with other partitions' batches (`commitTogether`). */
  prepare(write: BatchWrite): PreparedBatch;
  /** Commits one batch on its own. false: fenced (a newer epoch exists), nothing was written. */
  commit(write: BatchWrite): Promise<boolean>;
  /** Deletes sent outbox entries (when no next commit comes soon to take them along). */
  clearOutbox(fields: string[]): Promise<void>;
  /** The epoch stored now (for status and tests). */
  epoch(): Promise<number>;
  /**
   * Records the stream sequence of the newest trim mark this partition published (marks.ts), fenced by `epoch` and
   * never lowered. false: a newer owner holds the partition, nothing was written.
   */
  recordMark(epoch: number, seq: number): Promise<boolean>;
  /**
   * Records an attempt at the message after `cursor` (poison accounting, datapath/poison.ts), fenced by `epoch`:
   * `start` counts a start unless the last one at this cursor was made by `token` (a runner that restarts in the same
   * process after a failure it saw, such as a lost Redis connection); `fault` counts one whatever the token (the batch
   * threw); `solo` counts an attempt of the message alone. Counts restart from zero at another cursor. Returns the
   * counts at this cursor, or null when a newer epoch holds the partition.
   */
  attempt(epoch: number, cursor: number, token: string, what: 'start' | 'fault' | 'solo'): Promise<Attempts | null>;
  /**
   * Withdraws the start (and attempt alone) last counted at `cursor` under `token` ('' for the one a commit counts):
   * its runner let go alive. Nothing when another runner counted since. Not fenced: see WITHDRAW_LUA.
   */
  withdraw(cursor: number, token: string): Promise<boolean>;
}

/** Attempts at the message after a cursor that did not commit it: starts, and starts that took it alone. */
export interface Attempts {
  starts: number;
  solos: number;
}

/**
 * Entries asked for per HSCAN call while loading a table (a hint: Redis may answer somewhat more or fewer). Each
 * chunk is decoded on its own and the event loop runs between chunks, so loading a partition of any size never
 * holds up heartbeats, reads and commits of the worker's other partitions for long.
 */
const LOAD_CHUNK_ENTRIES = 1000;

/** Per Redis connection: its acquire script, made by the first store on it (with its replication settings). */
const acquires = new WeakMap<Redis, ScriptFn<number>>();

/**
 * Calls `onChunk` with the fields and values of the hash at `key`, LOAD_CHUNK_ENTRIES at a time (HSCAN), letting the
 * event loop run between chunks; the next chunk is asked for before this one is handed over. HSCAN may return an
 * entry twice; the caller's map keeps one. Consistent because nobody writes the partition meanwhile: it was
 * acquired (every older owner fenced) before it is loaded.
 */
async function scanHash(redis: Redis, key: string, onChunk: (pairs: Buffer[]) => void): Promise<void> {
  let next = redis.hscanBuffer(key, '0', 'COUNT', LOAD_CHUNK_ENTRIES);
  for (;;) {
    const [reply, pairs] = await next;
    const cursor = reply.toString();
    const done = cursor === '0';
    if (!done) next = redis.hscanBuffer(key, cursor, 'COUNT', LOAD_CHUNK_ENTRIES);
    onChunk(pairs);
    if (done) return;
    await yieldToEventLoop();
  }
}

/** Reads a partition as its last commit left it. */
async function loadPartition(redis: Redis, keys: PartitionKeys, tables: readonly string[]): Promise<Loaded> {
  // The outbox is small (at most OUTBOX_BATCHES_INFLIGHT_MAX entries): one HGETALL. The tables may hold millions
  // of entries: in chunks, decoded as they come, so the event loop never waits on one big reply and decode.
  const [[cursor, local, commits, mark], outboxRaw] = await Promise.all([redis.hmget(keys.meta, 'cursor', 'local', 'n', 'mark'), redis.hgetallBuffer(keys.outbox)]);
  const loaded: Tables = new Map();
  for (const name of tables) {
    const map = new Map<string, unknown>();
    await scanHash(redis, keys.table(name), (pairs) => {
      for (let j = 0; j + 1 < pairs.length; j += 2) map.set(pairs[j]!.toString(), decode(pairs[j + 1]!));
    });
    loaded.set(name, map);
  }
  const outbox = Object.entries(outboxRaw as Record<string, Buffer>).map(([field, v]): [string, Uint8Array] => [field, v]);
  outbox.sort(([a], [b]) => compareFields(a, b));
  return { cursor: Number(cursor ?? 0), local: Number(local ?? 0), commits: Number(commits ?? 0), mark: Number(mark ?? 0), tables: loaded, outbox };
}

/**
 * The Redis side of one partition. With `replication.waitReplicas` > 0, every commit and acquire counts only once
 * that many replicas have it (WAIT after the script, in the same round trip); the first store made on a connection
 * decides this for the connection.
 */
export function createPartitionStore(
  redis: Redis,
  prefix: string,
  kind: Kind,
  partition: number,
  tables: readonly string[],
  replication: ReplicationSettings = { waitReplicas: 0, waitTimeoutMs: 1000 },
): PartitionStore {
  const keys = partitionKeys(prefix, kind, partition);
  const tableKeys = tables.map((name) => ({ name, key: keys.table(name) }));
  const group = commitGroupOf(redis, replication);
  let acquireFn = acquires.get(redis);
  if (!acquireFn) acquires.set(redis, (acquireFn = scriptRunner<number>(redis, ACQUIRE_LUA, replication)));
  const acquireScript = acquireFn;

  const prepare = (write: BatchWrite): PreparedBatch => ({ group, ...commitArgs(keys.meta, keys.outbox, tableKeys, write) });

  return {
    keys,
    async acquire(epoch) {
      // WAITed like a commit: a replica promoted after this acquire must hold the raised epoch, or an older owner
      // it fenced could commit there again.
      const held = await acquireScript(1, [keys.meta, epoch === undefined ? '' : String(epoch)]);
      if (held < 0) throw new StaleEpochError(epoch!, -held);
      return held;
    },

    load: () => loadPartition(redis, keys, tables),

    prepare,

    async commit(write) {
      const [result] = await group.commit([prepare(write)]);
      return result === 'committed';
    },

    async clearOutbox(fields) {
      if (fields.length > 0) await redis.hdel(keys.outbox, ...fields);
    },

    async epoch() {
      return Number((await redis.hget(keys.meta, 'epoch')) ?? 0);
    },

    async recordMark(epoch, seq) {
      return (await redis.eval(RECORD_MARK_LUA, 1, keys.meta, String(epoch), String(seq))) === 1;
    },

    async attempt(epoch, cursor, token, what) {
      const counts = (await redis.eval(ATTEMPT_LUA, 1, keys.meta, String(epoch), String(cursor), token, what)) as [number, number] | null;
      return counts ? { starts: counts[0], solos: counts[1] } : null;
    },

    async withdraw(cursor, token) {
      return (await redis.eval(WITHDRAW_LUA, 1, keys.meta, String(cursor), token)) === 1;
    },
  };
}
