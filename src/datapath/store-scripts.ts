/**
 * A partition's keys in Redis and the Lua scripts that write them.
 *
 * Every key of a partition carries the hash tag `{kind:partition}` (partitionKeyTag):
 * - `:meta`, a hash: `epoch` (its owner's, fencing every older one), `n` (commits so far), `cursor` (last stream
 *   sequence applied), `local` (commands delivered from within the worker), `mark` (newest trim mark recorded),
 *   `attempts` (poison accounting, ATTEMPT_LUA);
 * - `:outbox`, a hash: the entries still to send (outbox.ts), by field;
 * - `:t:<table>`, a hash per table of the partition's actor: its entries, encoded.
 */
import { encode } from '../codec.js';
import type { Kind } from '../config.js';
import type { Changes } from './draft.js';

/** The hash tag keeps a partition's keys in one Redis Cluster slot, so its commit is atomic there too. */
export function partitionKeyTag(prefix: string, kind: Kind, partition: number): string {
  return `${prefix}{${kind}:${partition}}`;
}

/** The keys of one partition. */
export interface PartitionKeys {
  meta: string;
  outbox: string;
  table(name: string): string;
}

export function partitionKeys(prefix: string, kind: Kind, partition: number): PartitionKeys {
  const tag = partitionKeyTag(prefix, kind, partition);
  return { meta: `${tag}:meta`, outbox: `${tag}:outbox`, table: (name: string) => `${tag}:t:${name}` };
}

/**
 * Group commit: the transactions of every partition of this process that commit in the same event-loop turn go to
 * Redis as one script call. A transaction is one or more partitions' batches that must be written together (a
 * worker's batch that delivered saga messages between its partitions): if any of its partitions has a newer epoch,
 * none of its batches is written. Transactions of one call do not affect each other.
 * KEYS: per batch: meta, outbox, then the hash of each table the batch changes (not the others: a partition's batch
 *       usually changes one of its tables, and every key costs the client and the script).
 * ARGV: one argument per transaction, a msgpack array of batches, each a msgpack array (packArgs) read with Redis's
 *       cmsgpack: key count, epoch, commits, cursor, local count, outbox field ('' for none), outbox value, clear
 *       count, cleared fields..., then per table key: set count, (key, value)..., delete count, key... The counts are
 *       msgpack integers (a Lua number without a strtod), everything else strings.
 * `commits` is the partition's count of commits after this one: Redis must hold one less (meta field `n`), or the
 * batch is not written. Fewer: Redis lost commits it had acknowledged (restarted from files that miss them, a
 * replica that never had them); more: this batch or another owner's was written already.
 * Returns one result per batch: 1 committed, 0 fenced, 2 withheld (another partition of its transaction was refused),
 * 3 Redis behind (fewer commits than acknowledged), 4 Redis ahead.
 */
export const COMMIT_LUA = `
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
 * committed; fenced (a newer epoch holds the partition); withheld (another batch of the transaction was refused);
 * redis-behind (Redis holds fewer commits of the partition than were acknowledged: it lost some); redis-ahead (it
 * holds more: this batch was written already, by a command sent again over a new connection, or by another owner).
 * Nothing is written unless committed.
 */
export type CommitResult = 'committed' | 'fenced' | 'withheld' | 'redis-behind' | 'redis-ahead';
/** The commit script's result codes (COMMIT_LUA). */
export const COMMIT_RESULTS: Record<number, CommitResult> = { 0: 'fenced', 1: 'committed', 2: 'withheld', 3: 'redis-behind', 4: 'redis-ahead' };

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

/** A table of a partition: its name (what Changes are keyed by) and its Redis key. */
export interface TableKey {
  name: string;
  key: string;
}

/**
 * The keys and the argument of one batch for COMMIT_LUA: meta, outbox, then only the tables the batch changes (in
 * the partition's order), each with its sets and deletes.
 */
export function commitArgs(meta: string, outboxKey: string, tables: readonly TableKey[], { epoch, commits, cursor, local, changes, outboxField, outbox, cleared }: BatchWrite): { keys: string[]; args: Buffer } {
  const keys = [meta, outboxKey];
  const args: (string | Uint8Array | number)[] = [0, String(epoch), String(commits), String(cursor), String(local), outboxField, outbox ?? '', cleared.length];
  for (const c of cleared) args.push(c);
  for (const { name, key } of tables) {
    const changed = changes.get(name);
    if (!changed || changed.size === 0) continue;
    keys.push(key);
    const dels: string[] = [];
    const countAt = args.push(0) - 1;
    let sets = 0;
    for (const [k, v] of changed) {
      if (v === undefined) dels.push(k);
      else args.push(k, encode(v)), sets++;
    }
    args[countAt] = sets;
    args.push(dels.length);
    for (const d of dels) args.push(d);
  }
  args[0] = keys.length;
  return { keys, args: packArgs(args) };
}

/**
 * Packs strings, byte strings and counts as one msgpack array: strings as str32 (Redis's cmsgpack has no bin type;
 * its str is any bytes), counts (non-negative integers below 2^32) as uint32. One argument per batch instead of one
 * per key and value: the client's cost per argument is what dominated a commit, not Redis's.
 */
export function packArgs(items: (string | Uint8Array | number)[]): Buffer {
  let size = 5;
  for (const it of items) size += 5 + (typeof it === 'number' ? 0 : typeof it === 'string' ? Buffer.byteLength(it) : it.length);
  const out = Buffer.allocUnsafe(size);
  out[0] = 0xdd;
  out.writeUInt32BE(items.length, 1);
  let at = 5;
  for (const it of items) {
    if (typeof it === 'number') {
      out[at] = 0xce;
      out.writeUInt32BE(it, at + 1);
      at += 5;
      continue;
    }
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
export const ACQUIRE_LUA = `
local stored = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if ARGV[1] == '' then return redis.call('HINCRBY', KEYS[1], 'epoch', 1) end
local wanted = tonumber(ARGV[1])
if stored > wanted then return -stored end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
return wanted
`;

/**
 * The trim mark's record, fenced by the epoch: an owner that lost the partition and has not noticed yet may still
 * publish a mark and trim; recorded, its mark could be one the new owner's purge then takes, and the partition would
 * find its stream "made anew" at its next start (seen in a NATS cut-off, where every worker lost its lease). Never
 * lowered: marks are recorded in the order the stream stored them, whichever write lands last.
 */
export const RECORD_MARK_LUA = `
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'mark') or '0') < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'mark', ARGV[2]) end
return 1
`;

/**
 * Records an attempt at the message after a cursor (PartitionStore.attempt, poison accounting).
 * KEYS: meta. ARGV: epoch, cursor, token, what. The record is `cursor:starts:solos:token:last` in the meta hash's
 * `attempts`; a commit that moves the cursor writes `cursor:1:0::start` (its owner attempts the next message, and
 * nobody's start matches the empty token). The same runner starting again at the same cursor after a failure it saw
 * survived its last attempt: that one does not count, and if it was an attempt alone, it is taken back. A runner that
 * lets go alive withdraws its count (WITHDRAW_LUA; the record's `last` is then `left`).
 */
export const ATTEMPT_LUA = `
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

/**
 * Withdraws the count of a runner that let go alive (PartitionStore.withdraw): KEYS: meta. ARGV: cursor, token (''
 * for the start a commit counted). Only when the record is still at that cursor and its last writer is that token;
 * not fenced by the epoch. Returns 1 when withdrawn.
 */
export const WITHDRAW_LUA = `
local rec = redis.call('HGET', KEYS[1], 'attempts')
if not rec then return 0 end
local c, s, o, t, l = string.match(rec, '^(%d+):(%d+):(%d+):([^:]*):(%a*)$')
if c ~= ARGV[1] or t ~= ARGV[2] or l == 'left' then return 0 end
local starts, solos = tonumber(s), tonumber(o)
if starts > 0 then starts = starts - 1 end
if l == 'solo' and solos > 0 then solos = solos - 1 end
redis.call('HSET', KEYS[1], 'attempts', c .. ':' .. starts .. ':' .. solos .. ':' .. t .. ':left')
return 1
`;
