/**
 * What the benchmark's Redis counts mean (bench/commit-counts.ts): through the shop's own store and commit script on a
 * real redis-server with the workers' ACL user, one group commit is one call of the script, and each partition's
 * batch in it one read of that partition's meta, whatever the batch writes. If the commit script changes how it
 * reads meta, this says so, and the benchmark's partition batches per checkout must follow.
 */
import { Redis } from 'ioredis';
import t from 'tap';
import { commitTogether } from '../../src/datapath/commit-group.js';
import { createPartitionStore, type PartitionStore } from '../../src/datapath/store.js';
import { readCommitCounts, type CommitCounts } from '../../bench/commit-counts.js';
import { randomToken, startRedis, testUsers } from '../helpers/servers.js';

t.test("one group commit is one call of the script, and each partition's batch in it one read of its meta", async (t) => {
  const users = testUsers();
  const server = await startRedis(t, users);
  const redis = new Redis({ port: server.port, username: users.redis.user, password: users.redis.password, maxRetriesPerRequest: null });
  t.teardown(() => redis.disconnect());
  const prefix = `${randomToken()}:`;
  const stores: PartitionStore[] = [0, 1, 2, 3, 4].map((p) => createPartitionStore(redis, prefix, 'stock', p, ['items', 'ledger']));
  const epochs = await Promise.all(stores.map((s) => s.acquire()));
  const commits = stores.map(() => 0);
  /** Partition `p`'s next batch: `entries` items set, or none (a batch that only moves its counts). */
  const batch = (p: number, entries: number) =>
    stores[p]!.prepare({
      epoch: epochs[p]!,
      commits: ++commits[p]!,
      cursor: commits[p]!,
      local: 0,
      changes: new Map([['items', new Map(Array.from({ length: entries }, (_, i) => [`item-${i}`, { stock: i, price: 1 }]))]]),
      outboxField: '',
      outbox: null,
      cleared: [],
    });
  const counts = () => readCommitCounts(server.port, users.redis);
  const delta = (a: CommitCounts, b: CommitCounts) => ({ scriptCalls: b.scriptCalls - a.scriptCalls, metaReads: b.metaReads - a.metaReads });

  // The script's first call on a connection is an EVAL that loads it (script-runner.ts), every later one an EVALSHA:
  // the benchmark counts a load's commits, which come after its setup's.
  let before = await counts();
  t.same(await commitTogether([batch(0, 1)]), ['committed']);
  t.same(delta(before, await counts()), { scriptCalls: 0, metaReads: 1 }, 'the first commit on a connection loads the script (not counted as a commit)');

  before = await counts();
  t.same(await commitTogether([batch(0, 3), batch(1, 0), batch(2, 40), batch(3, 1), batch(4, 1)]), Array(5).fill('committed'));
  t.same(delta(before, await counts()), { scriptCalls: 1, metaReads: 5 }, 'five partitions in one commit: one call, five meta reads');

  before = await counts();
  for (const p of [0, 1]) t.same(await commitTogether([batch(p, 2)]), ['committed']);
  t.same(delta(before, await counts()), { scriptCalls: 2, metaReads: 2 }, 'one partition in each of two commits: two calls, two meta reads');

  before = await counts();
  t.same(await stores[2]!.commit({ epoch: epochs[2]! + 1, commits: commits[2]! + 1, cursor: 0, local: 0, changes: new Map(), outboxField: '', outbox: null, cleared: [] }), false, 'a fenced batch');
  t.same(delta(before, await counts()), { scriptCalls: 1, metaReads: 1 }, 'is counted alike: it was read, and refused');
});
