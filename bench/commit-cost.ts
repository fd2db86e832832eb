#!/usr/bin/env node
/**
 * What a partition costs in a commit, apart from what it writes (issue 20): the same entries committed through the
 * shop's own store and commit script (datapath/store.ts, commit-group.ts, COMMIT_LUA), spread over more or fewer
 * partitions per commit. Each configuration commits `--entries` item entries per commit, `--entries / p` in each of
 * `p` partitions, `--commits` times one after the other, and reports per commit: the client's CPU (this process:
 * preparing the batches, ioredis, the socket), the commit script's time as Redis counts it (INFO commandstats), and
 * redis-server's CPU (the script, the AOF write and fsync, the socket). A least-squares line over the
 * configurations splits each into a fixed cost per commit and a cost per partition in the commit.
 *
 * A scratch redis-server as the shop runs it (AOF, `appendfsync always` unless --appendfsync says otherwise), without
 * the ACL (an ACL adds a key check per command). One process, one connection, no other load; on a busy machine
 * the figures spread, so compare within one run.
 *
 *   npm run build && node dist/bench/commit-cost.js [--entries 120] [--commits 1000] [--appendfsync always]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { commitTogether } from '../src/datapath/commit-group.js';
import { createPartitionStore, type PartitionStore } from '../src/datapath/store.js';
import { freePort, redisAnswers, waitFor } from '../src/stack/probes.js';
import { findBinary, redisArgs, spawnChild, stopChild } from '../src/stack/processes.js';
import { parseInfo } from '../src/stack/topology.js';
import { commandStat } from './commit-counts.js';
import { clockTicksPerS, parseStat } from './proc.js';
import { leastSquares } from './stats.js';

const { values } = parseArgs({
  options: {
    entries: { type: 'string', default: '120' },
    commits: { type: 'string', default: '1000' },
    appendfsync: { type: 'string', default: 'always' },
  },
});
const ENTRIES = Number(values.entries);
const COMMITS = Number(values.commits);
const APPENDFSYNC = values.appendfsync as 'always' | 'everysec' | 'no';
if (!Number.isSafeInteger(ENTRIES) || ENTRIES < 1 || !Number.isSafeInteger(COMMITS) || COMMITS < 1 || !['always', 'everysec', 'no'].includes(APPENDFSYNC)) {
  throw new Error('--entries and --commits take positive integers, --appendfsync always, everysec or no');
}
/** Partitions per commit: every divisor of ENTRIES up to 128 (so each partition gets the same number of entries). */
const SPREADS = Array.from({ length: Math.min(ENTRIES, 128) }, (_, i) => i + 1).filter((p) => ENTRIES % p === 0);
/** Keys each partition writes, in turn: the entries are overwritten, so Redis's hashes keep their size. */
const KEYS_PER_PARTITION = 1000;
const TABLES = ['items', 'ledger'];
const TICKS_PER_S = clockTicksPerS();

/** redis-server's CPU so far, in microseconds (utime + stime of /proc/<pid>/stat). */
function redisCpuUs(pid: number): number {
  const stat = parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  if (!stat) throw new Error(`cannot read /proc/${pid}/stat`);
  return (stat.ownTicks / TICKS_PER_S) * 1e6;
}

/** The commit script's calls and microseconds so far, as Redis counts them (on the bench's own connection). */
async function scriptStats(redis: Redis): Promise<{ calls: number; usec: number }> {
  return commandStat(parseInfo(await redis.info('commandstats')), 'evalsha');
}

const dir = mkdtempSync(join(tmpdir(), 'shop-commit-cost-'));
const port = await freePort();
const server = spawnChild('redis', findBinary('redis-server'), { args: redisArgs({ port, dir, appendfsync: APPENDFSYNC }) });
const redis = new Redis({ port, lazyConnect: true, maxRetriesPerRequest: null });
try {
  await waitFor(() => redisAnswers(port), { what: 'redis-server to answer' });
  await redis.connect();
  const stores: PartitionStore[] = Array.from({ length: SPREADS[SPREADS.length - 1]! }, (_, p) => createPartitionStore(redis, 'bench:', 'stock', p, TABLES));
  const epochs = await Promise.all(stores.map((s) => s.acquire()));
  const commits = stores.map(() => 0);
  const keyOf = (p: number, i: number) => `item-${p}-${String(i % KEYS_PER_PARTITION).padStart(4, '0')}-4d5e-8f90-a1b2c3d4e5f6`;
  let written = 0;

  async function run(spread: number, count: number) {
    const each = ENTRIES / spread;
    for (let c = 0; c < count; c++) {
      const batches = stores.slice(0, spread).map((store, p) => {
        const items = new Map<string, unknown>();
        for (let i = 0; i < each; i++) items.set(keyOf(p, written + i), { stock: 1_000_000 - c, price: 1 });
        return store.prepare({ epoch: epochs[p]!, commits: ++commits[p]!, cursor: 0, local: commits[p]!, changes: new Map([['items', items]]), outboxField: '', outbox: null, cleared: [] });
      });
      written += each;
      const results = await commitTogether(batches);
      if (results.some((r) => r !== 'committed')) throw new Error(`a commit was not written: ${results.join(', ')}`);
    }
  }

  const pid = server.pid!;
  const rows: { spread: number; clientUs: number; scriptUs: number; redisUs: number }[] = [];
  for (const spread of SPREADS) await run(spread, COMMITS); // warm: the JIT, Redis's hashes
  for (const spread of SPREADS) {
    const cpu0 = process.cpuUsage();
    const s0 = await scriptStats(redis);
    const r0 = redisCpuUs(pid);
    await run(spread, COMMITS);
    const r1 = redisCpuUs(pid);
    const s1 = await scriptStats(redis);
    const cpu = process.cpuUsage(cpu0);
    rows.push({ spread, clientUs: (cpu.user + cpu.system) / COMMITS, scriptUs: (s1.usec - s0.usec) / (s1.calls - s0.calls), redisUs: (r1 - r0) / COMMITS });
  }

  const out = (s: string) => process.stdout.write(s + '\n');
  out(`commit-cost: ${ENTRIES} entries per commit, ${COMMITS} commits per row, appendfsync ${APPENDFSYNC}; microseconds per commit`);
  out('partitions  entries each   client   script   redis-server');
  for (const r of rows) out(`${String(r.spread).padStart(10)}  ${String(ENTRIES / r.spread).padStart(12)}  ${r.clientUs.toFixed(0).padStart(7)}  ${r.scriptUs.toFixed(0).padStart(7)}  ${r.redisUs.toFixed(0).padStart(13)}`);
  // A line needs two spreads at least (--entries 1 gives one: the cost of a commit of one entry).
  for (const [label, key] of rows.length < 2 ? [] : ([['client', 'clientUs'], ['script', 'scriptUs'], ['redis-server', 'redisUs']] as const)) {
    const { intercept, slope } = leastSquares(rows.map((r) => [r.spread, r[key]]));
    out(`${label.padEnd(13)} ${intercept.toFixed(0).padStart(6)} us per commit + ${slope.toFixed(2).padStart(6)} us per partition in it`);
  }
} finally {
  redis.disconnect();
  await stopChild(server, 5000);
  rmSync(dir, { recursive: true, force: true });
}
