/**
 * Redis with Sentinels on this machine: how long commits stop when the primary is lost, and how short the Sentinels'
 * `down-after-milliseconds` can be without failing over a primary that is only slow. A group of its own (free ports,
 * temporary dirs, the test helpers): a primary, `replicas` replicas, 3 Sentinels; one client connected through the
 * Sentinels with the workers' options (src/transport/connect.ts) committing one batch after the other with the
 * commit script and `WAIT 1` (src/datapath/store-scripts.ts, script-runner.ts).
 *
 *   npm run build && node dist/bench/sentinel.js failover <down-after ms (1000)> <rounds per fault (3)> <replicas (2)>
 *     Per round, SIGKILL or SIGSTOP of the primary, held until the Sentinels promoted a replica: the commit gap (last
 *     commit acknowledged before the fault to the first after), and when the Sentinels' events came (first seen on
 *     any Sentinel). A killed primary is restarted, a paused one resumed, before the next round.
 *   node dist/bench/sentinel.js watch <down-after ms> <seconds (120)> <busy loops (2)>
 *     No fault: `busy loops` processes spinning on the CPU beside the group and the committing client; counts the
 *     Sentinels' +sdown of the primary (one Sentinel thought it down), +odown (a quorum did) and +switch-master (a
 *     failover happened). Run it beside the fault tests for the storm too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { commitTogether } from '../src/datapath/commit-group.js';
import { createPartitionStore } from '../src/datapath/store.js';
import type { BatchWrite } from '../src/datapath/store-scripts.js';
import { connectRedis } from '../src/transport/connect.js';
import { redisInfo, SENTINEL_FAILOVER_TIMEOUT_MS } from '../src/stack/topology.js';
import { startRedisHA } from '../test/helpers/ha.js';
import { waitFor } from '../test/helpers/servers.js';

const [mode = 'failover', downAfterArg, countArg, extraArg] = process.argv.slice(2);
const downAfterMs = Number(downAfterArg ?? 1000);
/** How long a commit waits for its replica (the cluster profile's redisWaitTimeoutMs). */
const WAIT_TIMEOUT_MS = 1000;

const teardowns: (() => Promise<void> | void)[] = [];
const t = { teardown: (fn: () => Promise<void> | void) => teardowns.push(fn) } as unknown as Parameters<typeof startRedisHA>[0];
const busy: ChildProcess[] = [];
try {
  const replicas = mode === 'failover' ? Number(extraArg ?? 2) : 2;
  const ha = await startRedisHA(t, { replicas, sentinels: 3, downAfterMs });
  const settings = { ...ha.settings(), redisTlsCa: '', redisTlsCert: '', redisTlsKey: '' } as Parameters<typeof connectRedis>[0];
  const redis = await connectRedis(settings);
  teardowns.push(() => redis.disconnect());

  // Every event of every Sentinel, with the time it was first seen on any of them.
  const { Redis } = await import('ioredis');
  const events: { at: number; channel: string; text: string }[] = [];
  for (const s of ha.sentinels) {
    const sub = new Redis({ port: s.port, host: '127.0.0.1', password: ha.sentinelPassword, maxRetriesPerRequest: null });
    sub.on('error', () => {});
    teardowns.push(() => sub.disconnect());
    await sub.psubscribe('*');
    sub.on('pmessage', (_p, channel: string, text: string) => {
      if (channel.startsWith('__sentinel__')) return;
      events.push({ at: performance.now(), channel, text });
    });
  }
  const masterEvents = (channel: string, since: number) => events.filter((e) => e.at >= since && e.channel === channel && /^master /.test(e.text));

  // The committing client: one batch after the other, each WAITed by one replica, as a worker's partition commits.
  const store = createPartitionStore(redis, `bench${process.pid}:`, 'stock', 0, ['items'], { waitReplicas: 1, waitTimeoutMs: WAIT_TIMEOUT_MS });
  await waitFor(async () => ((await redis.call('WAIT', 1, 1000)) as number) >= 1, { deadlineMs: 30_000, what: 'a replica to acknowledge writes' });
  let epoch = await store.acquire();
  let commits = 0;
  const acked: number[] = [];
  const failures = new Map<string, number>();
  let stop = false;
  const committer = (async () => {
    while (!stop) {
      const write: BatchWrite = { epoch, commits: commits + 1, cursor: commits + 1, local: 0, changes: new Map([['items', new Map([['a', { stock: commits + 1, price: 1 }]])]]), outboxField: '', outbox: null, cleared: [] };
      try {
        // Refused: fenced, or Redis holds another count of commits than this client made (redis-behind: it lost an
        // acknowledged commit; redis-ahead: a commit whose answer was lost was written after all).
        const [result] = await commitTogether([store.prepare(write)]);
        if (result !== 'committed') throw new Error(`refused: ${result}`);
        commits++;
        acked.push(performance.now());
      } catch (err) {
        const name = (err as Error).name + ': ' + (err as Error).message.slice(0, 60);
        failures.set(name, (failures.get(name) ?? 0) + 1);
        // As a partition restarts from Redis: reload the count of commits, take the partition again.
        try {
          commits = (await store.load()).commits;
          epoch = await store.acquire();
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
    }
  })();

  if (mode === 'watch') {
    const seconds = Number(countArg ?? 120);
    for (let i = 0; i < Number(extraArg ?? 2); i++) busy.push(spawn(process.execPath, ['-e', 'for(;;);'], { stdio: 'ignore' }));
    const from = performance.now();
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    let longest = 0;
    for (let i = 1; i < acked.length; i++) longest = Math.max(longest, acked[i]! - acked[i - 1]!);
    console.log(
      `down-after ${downAfterMs} ms, ${seconds} s with ${busy.length} busy loops: +sdown of the primary ${masterEvents('+sdown', from).length}, +odown ${masterEvents('+odown', from).length}, ` +
        `+switch-master ${events.filter((e) => e.at >= from && e.channel === '+switch-master').length}, +tilt ${events.filter((e) => e.channel === '+tilt').length}; ` +
        `${acked.length} commits, longest gap ${Math.round(longest)} ms; failures ${JSON.stringify([...failures])}`,
    );
  } else {
    const rounds = Number(countArg ?? 3);
    const rows: string[] = [];
    let lastFailover = -Infinity;
    for (const fault of ['SIGKILL', 'SIGSTOP'] as const) {
      for (let r = 0; r < rounds; r++) {
        // The Sentinels fail the same primary over again only 2 × failover-timeout after its last failover.
        await waitFor(() => performance.now() - lastFailover >= 2 * SENTINEL_FAILOVER_TIMEOUT_MS + 500, { deadlineMs: 60_000, intervalMs: 100, what: 'the failover timeout' });
        const before = acked.length;
        await waitFor(() => acked.length >= before + 20, { deadlineMs: 30_000, intervalMs: 20, what: 'commits before the fault' });
        const primary = await ha.primary();
        const at = performance.now();
        if (fault === 'SIGKILL') primary.kill9();
        else primary.pause();
        const promoted = await ha.waitPrimary(primary, { replicas: 0 });
        lastFailover = performance.now();
        await waitFor(() => acked.some((a) => a > lastFailover), { deadlineMs: 30_000, intervalMs: 20, what: 'a commit after the failover' });
        // The commit gap: the longest time between two acknowledged commits from the last before the fault to the
        // first after the failover (a commit answered just after the fault was on its way already).
        const lastBefore = acked.reduce((m, a) => (a <= at ? Math.max(m, a) : m), -Infinity);
        const firstAfter = acked.reduce((m, a) => (a > lastFailover ? Math.min(m, a) : m), Infinity);
        let gap = 0;
        let prev = lastBefore;
        for (const a of acked) {
          if (a <= lastBefore || a > firstAfter) continue;
          gap = Math.max(gap, a - prev);
          prev = a;
        }
        // How the other replica caught up with the promoted one: a partial resynchronization (it keeps its data and
        // takes only what it missed) or a full copy. Counted by the promoted server since it started.
        const stats = await redisInfo(promoted.port, 'stats', ha.worker);
        const syncs = `its syncs: ${stats.get('sync_partial_ok')} partial, ${stats.get('sync_full')} full`;
        const ev = (channel: string) => {
          const e = events.find((x) => x.at >= at && x.channel === channel);
          return e ? `${Math.round(e.at - at)}` : '-';
        };
        rows.push(
          `${fault} round ${r + 1}: commits stopped ${Math.round(gap)} ms; ` +
            `+sdown ${ev('+sdown')}, +odown ${ev('+odown')}, +elected-leader ${ev('+elected-leader')}, +promoted-slave ${ev('+promoted-slave')}, ` +
            `+slave-reconf-done ${ev('+slave-reconf-done')}, +switch-master ${ev('+switch-master')} ms; ${promoted.url} promoted (${syncs})`,
        );
        console.log(rows.at(-1));
        if (process.env.BENCH_EVENTS) for (const e of events.filter((x) => x.at >= at)) console.log(`  ${Math.round(e.at - at)} ${e.channel} ${e.text}`);
        if (fault === 'SIGKILL') await primary.restart();
        else primary.resume();
        await ha.waitPrimary(primary, { replicas });
      }
    }
    console.log(`down-after ${downAfterMs} ms, ${replicas} replicas; failures: ${JSON.stringify([...failures])}`);
  }
  stop = true;
  await committer;
} finally {
  for (const b of busy) b.kill('SIGKILL');
  for (const fn of teardowns.reverse()) await fn();
}
