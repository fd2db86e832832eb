import type { Redis } from 'ioredis';
import { createHash } from 'node:crypto';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { decode, encode } from '../codec.js';
import type { Kind } from '../config.js';
import type { Changes, Tables } from './draft.js';
import { compareFields } from './outbox.js';

/**
 * Group commit: the transactions of every partition of this process that commit in the same event-loop turn go to
 * Redis as one script call. A transaction is one or more partitions' batches that must be written together (a
 * worker's batch that delivered saga messages between its partitions): if any of its partitions has a newer epoch,
 * none of its batches is written. Transactions of one call do not affect each other.
 * KEYS: per batch: meta, outbox, then one hash per table.
 * ARGV: one argument per transaction, a msgpack array of batches, each a msgpack array of strings (packArgs) read
 *       with Redis's cmsgpack: key count, epoch, commits, cursor, local count, outbox field ('' for none), outbox
 *       value, clear count, cleared fields..., then per table: set count, (key, value)..., delete count, key...
 * `commits` is the partition's count of commits after this one: Redis must hold one less (meta field `n`), or the
 * batch is not written. Fewer: Redis lost commits it had acknowledged (restarted from files that miss them, a
 * replica that never had them); more: this batch or another owner's was written already.
 * Returns one result per batch: 1 committed, 0 fenced, 2 withheld (another partition of its transaction was refused),
 * 3 Redis behind (fewer commits than acknowledged), 4 Redis ahead.
 */
const COMMIT_LUA = `
local results = {}
local k = 0
for x = 1, #ARGV do
  local txn = cmsgpack.unpack(ARGV[x])
  local refused = {}
  local any = false
  local kk = k
  local counted = {}
  local cursors = {}
  for b = 1, #txn do
    local meta = counted[KEYS[kk + 1]] or redis.call('HMGET', KEYS[kk + 1], 'epoch', 'n', 'cursor')
    local n = tonumber(meta[2] or '0')
    local wanted = tonumber(txn[b][3]) - 1
    counted[KEYS[kk + 1]] = { meta[1], txn[b][3], txn[b][4] }
    cursors[b] = meta[3]
    if meta[1] ~= txn[b][2] then refused[b] = 0; any = true
    elseif n < wanted then refused[b] = 3; any = true
    elseif n > wanted then refused[b] = 4; any = true end
    kk = kk + tonumber(txn[b][1])
  end
  for b = 1, #txn do
    local a = txn[b]
    local nkeys = tonumber(a[1])
    if any then
      results[#results + 1] = refused[b] or 2
    else
      if cursors[b] ~= a[4] then
        -- The cursor moves: this owner now attempts the message after it (poison accounting, see ATTEMPT_LUA).
        redis.call('HSET', KEYS[k + 1], 'n', a[3], 'cursor', a[4], 'local', a[5], 'attempts', a[4] .. ':1:0::start')
      else
        redis.call('HSET', KEYS[k + 1], 'n', a[3], 'cursor', a[4], 'local', a[5])
      end
      if a[6] ~= '' then redis.call('HSET', KEYS[k + 2], a[6], a[7]) end
      local i = 8
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
      results[#results + 1] = 1
    end
    k = k + nkeys
  end
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
  readonly keys: { meta: string; outbox: string; table(name: string): string };
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
   * Records an attempt at the message after `cursor` (poison accounting, datapath/runner.ts), fenced by `epoch`:
   * `start` counts a start unless the last one at this cursor was made by `token` (a runner that restarts in the same
   * process after a failure it saw, such as a lost Redis connection); `fault` counts one whatever the token (the batch
   * threw); `solo` counts an attempt of the message alone. Counts restart from zero at another cursor. Returns the
   * counts at this cursor, or null when a newer epoch holds the partition.
   */
  attempt(epoch: number, cursor: number, token: string, what: 'start' | 'fault' | 'solo'): Promise<Attempts | null>;
}

/** Attempts at the message after a cursor that did not commit it: starts, and starts that took it alone. */
export interface Attempts {
  starts: number;
  solos: number;
}

/**
 * KEYS: meta. ARGV: epoch, cursor, token, what. The record is `cursor:starts:solos:token:last` in the meta hash's
 * `attempts`; a commit that moves the cursor writes `cursor:1:0::start` (its owner attempts the next message, and
 * nobody's start matches the empty token). The same runner starting again at the same cursor after a failure it saw
 * survived its last attempt: that one does not count, and if it was an attempt alone, it is taken back.
 */
/**
 * The trim mark's record, fenced by the epoch: an owner that lost the partition and has not noticed yet may still
 * publish a mark and trim; recorded, its mark could be one the new owner's purge then takes, and the partition would
 * find its stream "made anew" at its next start (seen in a NATS cut-off, where every worker lost its lease). Never
 * lowered: marks are recorded in the order the stream stored them, whichever write lands last.
 */
const RECORD_MARK_LUA = `
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'mark') or '0') < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'mark', ARGV[2]) end
return 1
`;

const ATTEMPT_LUA = `
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return false end
local starts, solos, token, last = 0, 0, '', ''
local rec = redis.call('HGET', KEYS[1], 'attempts')
if rec then
  local c, s, o, t, l = string.match(rec, '^(%d+):(%d+):(%d+):([^:]*):(%a*)$')
  if c == ARGV[2] then starts = tonumber(s); solos = tonumber(o); token = t; last = l end
end
if ARGV[4] == 'solo' then
  solos = solos + 1; last = 'solo'
elseif ARGV[4] == 'fault' or token ~= ARGV[3] then
  starts = starts + 1; last = 'start'
else
  if last == 'solo' and solos > 0 then solos = solos - 1 end
  last = 'start'
end
redis.call('HSET', KEYS[1], 'attempts', ARGV[2] .. ':' .. starts .. ':' .. solos .. ':' .. ARGV[3] .. ':' .. last)
return {starts, solos}
`;

/** What one partition's batch writes. */
export interface BatchWrite {
  epoch: number;
  /** The partition's count of commits after this batch: Redis must hold one less. */
  commits: number;
  cursor: number;
  /** The partition's count of commands delivered from within its worker, after this batch. */
  local: number;
  changes: Changes;
  /** '' when the batch owes nothing. */
  outboxField: string;
  /** The encoded outbox entry (outbox.ts), or null. */
  outbox: Uint8Array | null;
  /** Outbox fields already sent, deleted with this batch. */
  cleared: string[];
}

/** A batch encoded for the commit script; commit it with `commitTogether`. */
export interface PreparedBatch {
  readonly group: CommitGroup;
  readonly keys: string[];
  /** packArgs of its arguments */
  readonly args: Buffer;
}

/**
 * committed; fenced (a newer epoch holds the partition); withheld (another batch of the transaction was refused);
 * redis-behind (Redis holds fewer commits of the partition than were acknowledged: it lost some); redis-ahead (it
 * holds more: this batch was written already, by a command sent again over a new connection, or by another owner).
 * Nothing is written unless committed.
 */
export type CommitResult = 'committed' | 'fenced' | 'withheld' | 'redis-behind' | 'redis-ahead';
const RESULTS: Record<number, CommitResult> = { 0: 'fenced', 1: 'committed', 2: 'withheld', 3: 'redis-behind', 4: 'redis-ahead' };

type Arg = string | Buffer;
// ioredis flattens array arguments, so a batch of any size goes as one array, never as spread call arguments.
type ScriptFn<R> = (numKeys: number, args: Arg[]) => Promise<R>;

/** How many replicas must have a write before it counts (Redis WAIT), and how long to wait for them. 0: no WAIT. */
export interface ReplicationSettings {
  waitReplicas: number;
  waitTimeoutMs: number;
}

/**
 * A commit (or an acquire) that fewer than `waitReplicas` replicas had within the timeout. It may be on the primary
 * and still be lost in a failover, so nobody may hear of it: the batch fails like a lost connection (its
 * partitions restart from what Redis holds, and re-send their outbox from there).
 */
export class ReplicationTimeoutError extends Error {
  override name = 'ReplicationTimeoutError';
  constructor(
    readonly acked: number,
    readonly wanted: number,
    readonly timeoutMs: number,
  ) {
    super(`the write reached ${acked} of ${wanted} Redis replica(s) within ${timeoutMs} ms (WAIT); not acknowledged: the partitions restart from Redis`);
  }
}

const isNoScript = (err: unknown) => err instanceof Error && err.message.startsWith('NOSCRIPT');

/** Connections lost so far, per client: a WAIT answered over another connection than its script's counts for nothing. */
const closes = new WeakMap<Redis, { count: number }>();
function closeCounter(redis: Redis): { count: number } {
  let counter = closes.get(redis);
  if (!counter) {
    const c = { count: 0 };
    redis.on('close', () => c.count++);
    closes.set(redis, (counter = c));
  }
  return counter;
}

/** The connection was lost between a script and its WAIT: whether the replicas have the script's writes is unknown. */
export class ReplicationUnknownError extends Error {
  override name = 'ReplicationUnknownError';
  constructor() {
    super('the Redis connection was lost between a write and its WAIT; not acknowledged: the partitions restart from Redis');
  }
}

/**
 * Runs a Lua script: in full (EVAL) the first time on each connection, which loads it, and by its SHA (EVALSHA)
 * after that, as ioredis's own scripts do; followed, with waitReplicas, by `WAIT waitReplicas waitTimeoutMs` in the
 * same round trip: both are written before either answer is read, and Redis answers WAIT once the replicas have
 * every write this connection made so far, the script's included. (WAIT cannot run inside a script.) When EVALSHA
 * finds the script missing anyway (its server flushed its scripts, or the command went out again over a new
 * connection: scripts are not replicated, so a promoted replica lacks them), the WAIT sent with it counted nothing of
 * it, so EVAL and WAIT go again.
 */
function scriptRunner<R>(redis: Redis, lua: string, replication: ReplicationSettings): ScriptFn<R> {
  const sha = createHash('sha1').update(lua).digest('hex');
  const { waitReplicas, waitTimeoutMs } = replication;
  const lost = closeCounter(redis);
  /** The connection (by its count of closes before it) this script was last sent in full on. */
  let loadedOn = -1;
  return async (numKeys, args) => {
    // ioredis sends a command again over the next connection when the one it went out on closed unanswered. A WAIT
    // sent again alone counts the new connection's writes (none), not the script's: the script may have reached the
    // old primary only, which a failover then drops. So a connection lost while the two are out fails the call.
    const closesBefore = lost.count;
    const checkWait = (acked: number) => {
      if (lost.count !== closesBefore) throw new ReplicationUnknownError();
      if (acked < waitReplicas) throw new ReplicationTimeoutError(acked, waitReplicas, waitTimeoutMs);
    };
    const full = loadedOn !== closesBefore;
    loadedOn = closesBefore;
    const script = (full ? redis.eval(lua, numKeys, args) : redis.evalsha(sha, numKeys, args)) as Promise<R>;
    const waited = waitReplicas > 0 ? redis.wait(waitReplicas, waitTimeoutMs) : undefined;
    let result: R;
    try {
      result = await script;
    } catch (err) {
      waited?.catch(() => {}); // answered or not, it does not count for this script
      if (!isNoScript(err)) throw err;
      result = (await redis.eval(lua, numKeys, args)) as R;
      if (waitReplicas > 0) checkWait(await redis.wait(waitReplicas, waitTimeoutMs));
      return result;
    }
    if (waited) checkWait(await waited);
    return result;
  };
}

/**
 * Entries asked for per HSCAN call while loading a table (a hint: Redis may answer somewhat more or fewer). Each
 * chunk is decoded on its own and the event loop runs between chunks, so loading a partition of any size never
 * holds up heartbeats, reads and commits of the worker's other partitions for long.
 */
const LOAD_CHUNK_ENTRIES = 1000;

/** One transaction of a group commit. */
interface Pending {
  keys: string[];
  /** the transaction's argument: a msgpack array of its batches' packArgs */
  args: Buffer;
  batches: number;
  resolve(results: CommitResult[]): void;
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
  // `run` is the commit script followed by WAIT when replicas must have it: one WAIT per group call, however many
  // transactions and partitions the call carries.

  /** Commits the batches as one transaction: all of them, or (one is fenced) none. */
  commit(batches: readonly PreparedBatch[]): Promise<CommitResult[]> {
    const header = Buffer.allocUnsafe(5);
    header[0] = 0xdd;
    header.writeUInt32BE(batches.length, 1);
    const args = Buffer.concat([header, ...batches.map((b) => b.args)]);
    const keys = batches.length === 1 ? batches[0]!.keys : batches.flatMap((b) => b.keys);
    return new Promise((resolve, reject) => {
      this.queue.push({ keys, args, batches: batches.length, resolve, reject });
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
      let at = 0;
      for (const p of group) p.resolve(results.slice(at, (at += p.batches)).map((r) => RESULTS[r]!));
    } catch (err) {
      for (const p of group) p.reject(err as Error);
    } finally {
      this.inflight = false;
      this.schedule();
    }
  }
}

const groups = new WeakMap<Redis, CommitGroup>();

/**
 * Commits batches of several partitions as one transaction (one atomic script run): every batch is written, or,
 * when any of their partitions is held at a newer epoch, none. The partitions must share one Redis connection.
 */
export function commitTogether(batches: readonly PreparedBatch[]): Promise<CommitResult[]> {
  const group = batches[0]?.group;
  if (!group || batches.some((b) => b.group !== group)) throw new Error('invariant: a transaction needs batches on one Redis connection');
  return group.commit(batches);
}

export function partitionKeyTag(prefix: string, kind: Kind, partition: number): string {
  // The hash tag keeps a partition's keys in one Redis Cluster slot, so its commit is atomic there too.
  return `${prefix}{${kind}:${partition}}`;
}

/** Per Redis connection: its commit group and acquire script, made by the first store on it (with its replication settings). */
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
  const tag = partitionKeyTag(prefix, kind, partition);
  const keys = { meta: `${tag}:meta`, outbox: `${tag}:outbox`, table: (name: string) => `${tag}:t:${name}` };
  const tableKeys = tables.map(keys.table);
  let group = groups.get(redis);
  if (!group) groups.set(redis, (group = new CommitGroup(scriptRunner<number[]>(redis, COMMIT_LUA, replication))));
  const commits = group;
  let acquireFn = acquires.get(redis);
  if (!acquireFn) acquires.set(redis, (acquireFn = scriptRunner<number>(redis, ACQUIRE_LUA, replication)));
  const acquireScript = acquireFn;

  const prepare = ({ epoch, commits: count, cursor, local, changes, outboxField, outbox, cleared }: BatchWrite): PreparedBatch => {
    const args: (string | Uint8Array)[] = [String(2 + tableKeys.length), String(epoch), String(count), String(cursor), String(local), outboxField, outbox ?? '', String(cleared.length), ...cleared];
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
    return { group: commits, keys: [keys.meta, keys.outbox, ...tableKeys], args: packArgs(args) };
  };

  return {
    keys,
    async acquire(epoch) {
      // WAITed like a commit: a replica promoted after this acquire must hold the raised epoch, or an older owner
      // it fenced could commit there again.
      const held = await acquireScript(1, [keys.meta, epoch === undefined ? '' : String(epoch)]);
      if (held < 0) throw new StaleEpochError(epoch!, -held);
      return held;
    },

    async load() {
      // The outbox is small (at most OUTBOX_BATCHES_INFLIGHT_MAX entries): one HGETALL. The tables may hold millions
      // of entries: in chunks, decoded as they come, so the event loop never waits on one big reply and decode.
      const [[cursor, local, commits, mark], outboxRaw] = await Promise.all([redis.hmget(keys.meta, 'cursor', 'local', 'n', 'mark'), redis.hgetallBuffer(keys.outbox)]);
      const loaded: Tables = new Map();
      for (const [i, name] of tables.entries()) {
        const map = new Map<string, unknown>();
        await scanHash(redis, tableKeys[i]!, (pairs) => {
          for (let j = 0; j + 1 < pairs.length; j += 2) map.set(pairs[j]!.toString(), decode(pairs[j + 1]!));
        });
        loaded.set(name, map);
      }
      const outbox = Object.entries(outboxRaw as Record<string, Buffer>).map(([field, v]): [string, Uint8Array] => [field, v]);
      outbox.sort(([a], [b]) => compareFields(a, b));
      return { cursor: Number(cursor ?? 0), local: Number(local ?? 0), commits: Number(commits ?? 0), mark: Number(mark ?? 0), tables: loaded, outbox };
    },

    prepare,

    async commit(write) {
      const [result] = await commits.commit([prepare(write)]);
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
  };
}
