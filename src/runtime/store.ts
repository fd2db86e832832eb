import type { Redis } from 'ioredis';
import { decode, encode } from '../codec.js';
import type { Kind } from '../config.js';

/**
 * One commit per batch, atomic: fencing check, changed keys, cursor and outbox together.
 * KEYS: meta, outbox, then one hash per table.
 * ARGV: epoch, cursor, outbox field ('' for none), outbox value, clear count, cleared fields...,
 *       then per table: set count, (key, value)..., delete count, key...
 * Returns 0 (and writes nothing) when the stored epoch is not ours: a newer owner took the partition.
 */
const COMMIT_LUA = `
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'cursor', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[4]) end
local i = 5
local n = tonumber(ARGV[i]); i = i + 1
if n > 0 then redis.call('HDEL', KEYS[2], unpack(ARGV, i, i + n - 1)); i = i + n end
for t = 3, #KEYS do
  n = tonumber(ARGV[i]); i = i + 1
  while n > 0 do
    local chunk = math.min(n, ${'256'})
    redis.call('HSET', KEYS[t], unpack(ARGV, i, i + 2 * chunk - 1))
    i = i + 2 * chunk; n = n - chunk
  end
  n = tonumber(ARGV[i]); i = i + 1
  while n > 0 do
    local chunk = math.min(n, ${'512'})
    redis.call('HDEL', KEYS[t], unpack(ARGV, i, i + chunk - 1))
    i = i + chunk; n = n - chunk
  end
end
return 1
`;

/**
 * Takes a partition at a given epoch (from the placement): refused, returning the stored epoch negated, when a
 * newer epoch is already stored; otherwise stores it. Without an epoch the stored one is raised by one.
 */
const ACQUIRE_LUA = `
local stored = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if ARGV[1] == '' then return redis.call('HINCRBY', KEYS[1], 'epoch', 1) end
local wanted = tonumber(ARGV[1])
if stored > wanted then return -stored end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
return wanted
`;

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

/** Messages a committed batch still owes: JetStream commands to other partitions and replies to gateways. */
export interface Outbox {
  /** [subject, Nats-Msg-Id, data] */
  js: [string, string, Uint8Array][];
  /** [subject, data] */
  replies: [string, Uint8Array][];
}

/** Changed keys of one batch: table -> key -> new value, or undefined for a delete. */
export type Changes = Map<string, Map<string, unknown>>;

export interface Loaded {
  cursor: number;
  tables: Map<string, Map<string, unknown>>;
  /** Pending outbox entries, oldest first, with their field names. */
  outbox: [string, Outbox][];
}

export interface PartitionStore {
  readonly keys: { meta: string; outbox: string; table(name: string): string };
  /**
   * Takes the partition, fencing every older owner: at `epoch` (from the placement; throws StaleEpochError when
   * a newer one is stored), or without one by raising the stored epoch by one. Returns the epoch now held.
   */
  acquire(epoch?: number): Promise<number>;
  load(): Promise<Loaded>;
  /** false: fenced (a newer epoch exists), nothing was written. */
  commit(epoch: number, cursor: number, changes: Changes, outboxField: string, outbox: Outbox | null, clearFields: string[]): Promise<boolean>;
  /** Deletes sent outbox entries (when no next commit comes soon to take them along). */
  clearOutbox(fields: string[]): Promise<void>;
  /** The epoch stored now (for status and tests). */
  epoch(): Promise<number>;
}

// ioredis flattens array arguments, so a batch of any size goes as one array, never as spread call arguments.
type CommitFn = (numKeys: number, args: (string | Buffer | number)[]) => Promise<number>;

export function partitionKeyTag(prefix: string, kind: Kind, partition: number): string {
  // The hash tag keeps a partition's keys in one Redis Cluster slot, so its commit is atomic there too.
  return `${prefix}{${kind}:${partition}}`;
}

export function createPartitionStore(redis: Redis, prefix: string, kind: Kind, partition: number, tables: readonly string[]): PartitionStore {
  const tag = partitionKeyTag(prefix, kind, partition);
  const keys = { meta: `${tag}:meta`, outbox: `${tag}:outbox`, table: (name: string) => `${tag}:t:${name}` };
  const tableKeys = tables.map(keys.table);
  if (!('shopCommit' in redis)) {
    redis.defineCommand('shopCommit', { lua: COMMIT_LUA });
    redis.defineCommand('shopAcquire', { lua: ACQUIRE_LUA });
  }
  const commitFn = (redis as unknown as { shopCommit: CommitFn }).shopCommit.bind(redis);
  const acquireFn = (redis as unknown as { shopAcquire: CommitFn }).shopAcquire.bind(redis);

  return {
    keys,
    async acquire(epoch) {
      const held = await acquireFn(1, [keys.meta, epoch === undefined ? '' : String(epoch)]);
      if (held < 0) throw new StaleEpochError(epoch!, -held);
      return held;
    },

    async load() {
      const [cursor, outboxRaw, ...tableRaw] = await Promise.all([
        redis.hget(keys.meta, 'cursor'),
        redis.hgetallBuffer(keys.outbox),
        ...tableKeys.map((key) => redis.hgetallBuffer(key)),
      ]);
      const loaded = new Map<string, Map<string, unknown>>();
      tables.forEach((name, i) => {
        const map = new Map<string, unknown>();
        for (const [k, v] of Object.entries(tableRaw[i] as Record<string, Buffer>)) map.set(k, decode(v));
        loaded.set(name, map);
      });
      const outbox = Object.entries(outboxRaw as Record<string, Buffer>)
        .map(([field, v]) => [field, decode<Outbox>(v)] as [string, Outbox])
        .sort((a, b) => Number(a[0]) - Number(b[0]));
      return { cursor: cursor === null ? 0 : Number(cursor), tables: loaded, outbox };
    },

    async commit(epoch, cursor, changes, outboxField, outbox, clearFields) {
      const args: (string | Buffer | number)[] = [keys.meta, keys.outbox, ...tableKeys, String(epoch), String(cursor), outboxField, outbox ? encode(outbox) : '', clearFields.length, ...clearFields];
      for (const name of tables) {
        const changed = changes.get(name);
        const dels: string[] = [];
        const countAt = args.push(0) - 1;
        let sets = 0;
        if (changed) {
          for (const [k, v] of changed) {
            if (v === undefined) dels.push(k);
            else args.push(k, encode(v)), sets++;
          }
        }
        args[countAt] = sets;
        args.push(dels.length);
        for (const d of dels) args.push(d);
      }
      const result = await commitFn(2 + tableKeys.length, args);
      return result === 1;
    },

    async clearOutbox(fields) {
      if (fields.length > 0) await redis.hdel(keys.outbox, ...fields);
    },

    async epoch() {
      return Number((await redis.hget(keys.meta, 'epoch')) ?? 0);
    },
  };
}
