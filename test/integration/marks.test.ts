/**
 * The record of the stream marks (src/datapath/marks.ts) in Redis, on a real redis-server. The start check and the
 * marks' payload are test/unit/marks.test.ts.
 */
import { Redis } from 'ioredis';
import t from 'tap';
import { createPartitionStore } from '../../src/datapath/store.js';
import { randomToken, startRedis } from '../helpers/servers.js';

t.test('a mark is recorded only by the owner at the epoch Redis holds, and the record never goes down', async (t) => {
  const server = await startRedis(t);
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  t.teardown(() => redis.disconnect());
  const store = createPartitionStore(redis, `${randomToken()}:`, 'payment', 1, ['users', 'ledger']);
  const old = await store.acquire(); // the owner that is about to lose the partition
  const now = await store.acquire(); // its successor
  t.ok(await store.recordMark(now, 891), 'the owner records its mark');
  // The deposed owner trims once more before it notices: its mark would be one the new owner's next purge takes,
  // and the partition would refuse its stream as made anew at its next start (a NATS cut-off in CI, 2026-12-06).
  t.notOk(await store.recordMark(old, 905), 'a deposed owner records nothing');
  t.ok(await store.recordMark(now, 870), 'an older mark landing late is accepted...');
  t.equal((await store.load()).mark, 891, '...and changes nothing: the newest mark stands');
});
