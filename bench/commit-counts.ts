/**
 * How many commits and partition batches a request made: Redis's own counters (INFO commandstats) before and after
 * a run's load, on the stack the run started. The commit script (src/datapath/store-scripts.ts COMMIT_LUA) is called
 * once per group commit (EVALSHA, once its first call on the connection, an EVAL, has loaded it: in the run's setup)
 * and reads each partition's meta once per partition batch (HMGET); nothing else calls either while a load runs
 * (test/integration/commit-counts.test.ts holds the script to it). A partition batch
 * is what a partition costs in a commit whatever it writes (docs/perf/scale-out.md): at 64 partitions per kind a
 * checkout makes many more of them than at 2.
 */
import type { RedisLogin } from '../src/auth.js';
import { redisInfo } from '../src/stack/topology.js';

/** Redis's counts so far. */
export interface CommitCounts {
  /** EVALSHA calls: of the commit script (and of the acquire script, which a steady load does not call): group commits. */
  scriptCalls: number;
  /** Reads of a partition's meta by the commit script: partition batches. */
  metaReads: number;
}

/** Per request of a load (a checkout, in checkout-fresh). */
export interface CommitFigures {
  commitsPerRequest: number;
  partitionBatchesPerRequest: number;
}

/**
 * One command's calls and microseconds in `INFO commandstats`, read as a map of its lines (topology.ts redisInfo,
 * parseInfo); 0 for a command not called yet.
 */
export function commandStat(stats: ReadonlyMap<string, string>, command: string): { calls: number; usec: number } {
  const m = /^calls=(\d+)(?:,usec=(\d+))?/.exec(stats.get(`cmdstat_${command}`) ?? '');
  return { calls: Number(m?.[1] ?? 0), usec: Number(m?.[2] ?? 0) };
}

/** The commit script's calls and its reads of a partition's meta (`HMGET`), from `INFO commandstats` as a map of its lines. */
export function commitCountsOf(stats: ReadonlyMap<string, string>): CommitCounts {
  return { scriptCalls: commandStat(stats, 'evalsha').calls, metaReads: commandStat(stats, 'hmget').calls };
}

/** What `requests` made between two readings; undefined without requests. */
export function commitFigures(before: CommitCounts, after: CommitCounts, requests: number): CommitFigures | undefined {
  if (requests <= 0) return undefined;
  // Five decimals: a commit is shared by about a hundred checkouts, and checkouts per commit is read from this.
  const per = (n: number) => Math.round((n / requests) * 1e5) / 1e5;
  return { commitsPerRequest: per(after.scriptCalls - before.scriptCalls), partitionBatchesPerRequest: per(after.metaReads - before.metaReads) };
}

/** Reads the counts as `login` (the workers' Redis user may read INFO). */
export async function readCommitCounts(port: number, login: RedisLogin): Promise<CommitCounts> {
  return commitCountsOf(await redisInfo(port, 'commandstats', login));
}
