import type { Redis } from 'ioredis';
import { decode, encode } from '../codec.js';
import type { Kind } from '../config.js';

/**
 * Group commit: the batches of every partition of this process that commit in the same event-loop turn go to
 * Redis as one script call, each batch still atomic and fenced on its own (a batch whose partition has a newer
 * epoch writes nothing; the others are not affected).
 * KEYS: per batch: meta, outbox, then one hash per table.
 * ARGV: one argument per batch, a msgpack array of strings (packArgs) read with Redis's cmsgpack:
 *       key count, epoch, cursor, outbox field ('' for none), outbox value, clear count, cleared fields...,
 *       then per table: set count, (key, value)..., delete count, key...
 * Returns one result per batch: 1 committed, 0 fenced (nothing written).
 */
const COMMIT_LUA = `
local results = {}
local k = 0
for b = 1, #ARGV do
  local a = cmsgpack.unpack(ARGV[b])
  local nkeys = tonumber(a[1])
  if redis.call('HGET', KEYS[k + 1], 'epoch') ~= a[2] then
    results[b] = 0
  else
    redis.call('HSET', KEYS[k + 1], 'cursor', a[3])
    if a[4] ~= '' then redis.call('HSET', KEYS[k + 2], a[4], a[5]) end
    local i = 6
    local n = tonumber(a[i]); i = i + 1
    if n > 0 then redis.call('HDEL', KEYS[k + 2], unpack(a, i, i + n - 1)); i = i + n end
    for t = k + 3, k + nkeys do
      n = tonumber(a[i]); i = i + 1
      while n > 0 do
        local chunk = math.min(n, 256)
        redis.call('HSET', KEYS[t], unpack(a, i, i + 2 * chunk - 1))
        i = i + 2 * chunk; n = n - chunk
      end
      n = tonumber(a[i]); i = i + 1
      while n > 0 do
        local chunk = math.min(n, 512)
        redis.call('HDEL', KEYS[t], unpack(a, i, i + chunk - 1))
        i = i + chunk; n = n - chunk
      end
    end
    results[b] = 1
  end
  k = k + nkeys
end
return results
`;

/**
 * Packs strings and byte strings as one msgpack array of str32 (Redis's cmsgpack has no bin type; its str is any
 * bytes). One argument per batch instead of one per key and value: the client's cost per argument is what
 * dominated a commit, not Redis's.
 */
export function packArgs(items: (string | Uint8Array)[]): Buffer {
  let size = 5;
  for (const it of items) size += 5 + (typeof it === 'string' ? Buffer.byteLength(it) : it.length);
  const out = Buffer.allocUnsafe(size);
  out[0] = 0xdd;
  out.writeUInt32BE(items.length, 1);
  let at = 5;
  for (const it of items) {
    out[at] = 0xdb;
    const len = typeof it === 'string' ? out.write(it, at + 5) : (out.set(it, at + 5), it.length);
    out.writeUInt32BE(len, at + 1);
    at += 5 + len;
  }
  return out;
}

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

type Arg = string | Buffer;
// ioredis flattens array arguments, so a batch of any size goes as one array, never as spread call arguments.
type ScriptFn<R> = (numKeys: number, args: Arg[]) => Promise<R>;

/** One batch's part of a group commit. */
interface Pending {
  keys: string[];
  /** packArgs of its arguments */
  args: Buffer;
  resolve(committed: boolean): void;
  reject(err: Error): void;
}

/**
 * Most bytes of arguments in one group commit: a group of large batches (batch_init ranges) is cut here, so that
 * no single script call keeps Redis busy for long.
 */
const GROUP_BYTES_MAX = 4 * 1024 * 1024;

/**
 * Collects the commits of one process's partitions and sends them together: at the end of the event-loop turn
 * when no group is in flight, otherwise as soon as the one in flight returns. Under load a group holds whatever
 * arrived during the previous round trip, so its size follows the load (group commit).
 */
class CommitGroup {
  private queue: Pending[] = [];
  private inflight = false;
  private scheduled = false;

  constructor(private readonly run: ScriptFn<number[]>) {}

  commit(keys: string[], args: Buffer): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.queue.push({ keys, args, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.inflight || this.scheduled || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.inflight || this.queue.length === 0) return;
    let size = 0;
    let take = 0;
    while (take < this.queue.length && (take === 0 || size + this.queue[take]!.args.length <= GROUP_BYTES_MAX)) size += this.queue[take++]!.args.length;
    const group = this.queue.splice(0, take);
    const keysThenArgs: Arg[] = [];
    for (const p of group) for (const key of p.keys) keysThenArgs.push(key);
    const numKeys = keysThenArgs.length;
    for (const p of group) keysThenArgs.push(p.args);
    this.inflight = true;
    try {
      const results = await this.run(numKeys, keysThenArgs);
      group.forEach((p, i) => p.resolve(results[i] === 1));
    } catch (err) {
      for (const p of group) p.reject(err as Error);
    } finally {
      this.inflight = false;
      this.schedule();
    }
  }
}

const groups = new WeakMap<Redis, CommitGroup>();

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
  let group = groups.get(redis);
  if (!group) groups.set(redis, (group = new CommitGroup((redis as unknown as { shopCommit: ScriptFn<number[]> }).shopCommit.bind(redis))));
  const commits = group;
  const acquireFn = (redis as unknown as { shopAcquire: ScriptFn<number> }).shopAcquire.bind(redis);

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
      const args: (string | Uint8Array)[] = [String(2 + tableKeys.length), String(epoch), String(cursor), outboxField, outbox ? encode(outbox) : '', String(clearFields.length), ...clearFields];
      for (const name of tables) {
        const changed = changes.get(name);
        const dels: string[] = [];
        const countAt = args.push('') - 1;
        let sets = 0;
        if (changed) {
          for (const [k, v] of changed) {
            if (v === undefined) dels.push(k);
            else args.push(k, encode(v)), sets++;
          }
        }
        args[countAt] = String(sets);
        args.push(String(dels.length));
        for (const d of dels) args.push(d);
      }
      return commits.commit([keys.meta, keys.outbox, ...tableKeys], packArgs(args));
    },

    async clearOutbox(fields) {
      if (fields.length > 0) await redis.hdel(keys.outbox, ...fields);
    },

    async epoch() {
      return Number((await redis.hget(keys.meta, 'epoch')) ?? 0);
    },
  };
}
