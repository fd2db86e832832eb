/**
 * Runs a Lua script on a Redis connection, with (when replicas must have its writes) a WAIT in the same round trip.
 */
import type { Redis } from 'ioredis';
import { createHash } from 'node:crypto';

export type Arg = string | Buffer;
// ioredis flattens array arguments, so a batch of any size goes as one array, never as spread call arguments.
export type ScriptFn<R> = (numKeys: number, args: Arg[]) => Promise<R>;

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
class ReplicationUnknownError extends Error {
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
export function scriptRunner<R>(redis: Redis, lua: string, replication: ReplicationSettings): ScriptFn<R> {
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
