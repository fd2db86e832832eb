/**
 * Group commit: the batches of every partition of a process that commit in the same event-loop turn go to Redis in
 * one call of the commit script (store-scripts.ts COMMIT_LUA), each transaction of them all or nothing.
 */
import type { Redis } from 'ioredis';
import { scriptRunner, type Arg, type ReplicationSettings, type ScriptFn } from './script-runner.js';
import { COMMIT_LUA, COMMIT_RESULTS, type CommitResult } from './store-scripts.js';

/** A batch encoded for the commit script; commit it with `commitTogether`. */
export interface PreparedBatch {
  readonly group: CommitGroup;
  readonly keys: string[];
  /** Its argument for the commit script (store-scripts.ts commitArgs). */
  readonly args: Buffer;
}

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
      for (const p of group) p.resolve(results.slice(at, (at += p.batches)).map((r) => COMMIT_RESULTS[r]!));
    } catch (err) {
      for (const p of group) p.reject(err as Error);
    } finally {
      this.inflight = false;
      this.schedule();
    }
  }
}

/**
 * Commits batches of several partitions as one transaction (one atomic script run): every batch is written, or,
 * when any of their partitions is held at a newer epoch, none. The partitions must share one Redis connection.
 */
export function commitTogether(batches: readonly PreparedBatch[]): Promise<CommitResult[]> {
  const group = batches[0]?.group;
  if (!group || batches.some((b) => b.group !== group)) throw new Error('invariant: a transaction needs batches on one Redis connection');
  return group.commit(batches);
}

/** Per Redis connection: its commit group, made by the first store on it (with its replication settings). */
const groups = new WeakMap<Redis, CommitGroup>();

/** The commit group of a Redis connection (commits of partitions on other connections cannot share a script call). */
export function commitGroupOf(redis: Redis, replication: ReplicationSettings): CommitGroup {
  let group = groups.get(redis);
  if (!group) groups.set(redis, (group = new CommitGroup(scriptRunner<number[]>(redis, COMMIT_LUA, replication))));
  return group;
}
