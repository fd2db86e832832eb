import type { JetStreamManager } from 'nats';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import type { Names } from '../protocol.js';

/**
 * A trim (one JetStream API call) is skipped until this many stream messages were applied since the last one, or
 * TRIM_IDLE_INTERVALS trim intervals have passed: with 64 partitions per kind, a purge of every partition every
 * interval was a steady load of API calls on nats-server for a few messages each.
 */
const TRIM_MIN_MESSAGES = 256;
const TRIM_IDLE_INTERVALS = 12;

/**
 * How long after a commit Redis may still lose it, by its appendfsync policy: the stream is never trimmed past a
 * cursor younger than this (the commands would be needed again). `everysec`: Redis 7.0 postpones writing the AOF
 * while a background fsync is under way, for up to two whole seconds of its clock (so almost 3 s), and answers
 * meanwhile: a crash of redis-server alone loses those (test/faults/redis-disk.test.ts), a power loss up to a second
 * more. `no` leaves flushing to the kernel, which writes dirty pages back within about 30 s.
 */
export function durableAfterMs(appendfsync: Config['redisAppendfsync']): number {
  return appendfsync === 'always' ? 0 : appendfsync === 'everysec' ? 4_000 : 35_000;
}

/**
 * The newest cursor Redis has surely made durable: the last of `commits` (time, cursor; oldest first) made at or
 * before `safeBefore`, or `durable` when none is; with the commits still too young to count.
 */
export function durableCursor(commits: readonly [atMs: number, cursor: number][], safeBefore: number, durable: number): { durable: number; younger: [number, number][] } {
  let aged = 0;
  while (aged < commits.length && commits[aged]![0] <= safeBefore) durable = Math.max(durable, commits[aged++]![1]);
  return { durable, younger: commits.slice(aged) };
}

export interface TrimmingDeps {
  jsm: JetStreamManager;
  names: Names;
  kind: Kind;
  partition: number;
  config: Pick<Config, 'redisAppendfsync' | 'trimIntervalMs'>;
  log: Log;
  /** The runner reads its stream (a trim after it let go would purge for the next owner). */
  active: () => boolean;
  /** Publishes a mark of the stream trimmed up to `seq` and records it in Redis as the owner at its epoch (marks.ts). */
  mark: (seq: number) => Promise<void>;
}

/**
 * Trims one partition's commands from its stream while the runner serves: every trimIntervalMs, below the committed
 * cursor that Redis has surely made durable (durableAfterMs ago). The stream holds only what is unapplied, or
 * applied too recently to be safe on disk.
 */
export class Trimming {
  private timer: NodeJS.Timeout | null = null;
  private _trimmedTo = 0;

  /** The stream sequence up to which the partition's commands are trimmed (purged). */
  get trimmedTo(): number {
    return this._trimmedTo;
  }
  /** Stream messages applied since the last trim, and the trim ticks skipped since. */
  private untrimmed = 0;
  private skips = 0;
  /** (time, cursor) of recent commits: the stream is trimmed only below a cursor Redis has surely made durable. */
  private commits: [atMs: number, cursor: number][] = [];
  /** The newest cursor committed at least durableAfterMs ago. */
  private durable = 0;
  /** The newest cursor committed. */
  private cursor = 0;

  constructor(private readonly deps: TrimmingDeps) {}

  /** Taken at `cursor` (loaded from Redis): nothing trimmed by this owner yet. */
  reset(cursor: number): void {
    this._trimmedTo = 0;
    this.untrimmed = 0;
    this.skips = 0;
    this.durable = 0;
    this.cursor = cursor;
    // What an earlier owner committed counts as committed now: once Redis has surely made it durable, this owner may
    // trim it (a partition that moved, and then had no command of its own, used to keep its predecessor's forever).
    this.commits = [[Date.now(), cursor]];
  }

  /** A batch committed the cursor `cursor`, with `streamMessages` messages of the stream applied. */
  committed(cursor: number, streamMessages: number): void {
    if (cursor > this.cursor) this.commits.push([Date.now(), cursor]);
    this.cursor = cursor;
    this.untrimmed += streamMessages;
  }

  start(): void {
    this.timer = setInterval(() => void this.trim(), this.deps.config.trimIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Purges this partition's commands up to the durable cursor, when enough were applied or long enough passed. */
  private async trim(): Promise<void> {
    const { jsm, names, kind, partition, config, log } = this.deps;
    if (!this.deps.active()) return;
    ({ durable: this.durable, younger: this.commits } = durableCursor(this.commits, Date.now() - durableAfterMs(config.redisAppendfsync), this.durable));
    const upTo = this.durable;
    if (upTo <= this._trimmedTo) return;
    if (this.untrimmed < TRIM_MIN_MESSAGES && ++this.skips < TRIM_IDLE_INTERVALS) return;
    this.untrimmed = 0;
    this.skips = 0;
    try {
      // The mark first (marks.ts): the stream then always says how far it was trimmed. The purge takes this
      // partition's commands and older marks up to upTo (`<kind>.*.<n>`), never the new mark, stored after them.
      await this.deps.mark(upTo);
      await jsm.streams.purge(names.stream(kind), { filter: names.partitionSubjects(kind, partition), seq: upTo + 1 });
      this._trimmedTo = upTo;
    } catch (err) {
      log.warn('trim failed', { err });
    }
  }
}
