/**
 * Redis with a disk that stalls: its AOF fsync thread frozen (a cgroup freezer holding that one thread, as a disk busy
 * with other writers holds an fsync for seconds), then SIGKILLed and started again from its own files. Every commit
 * Redis acknowledged must come back.
 *
 * With `appendfsync everysec`, Redis 7.0 answers a write while its background fsync is still running without writing
 * it to the AOF at all (it postpones the write up to two seconds so as not to block on the fsync: `flushAppendOnlyFile`)
 * so a SIGKILL in that window loses acknowledged commits, however healthy the machine. The shop runs its Redis as this
 * test does (the test servers take the shop's default policy).
 */
import { Redis } from 'ioredis';
import t from 'tap';
import { createPartitionStore } from '../../src/datapath/store.js';
import { DEFAULT_APPENDFSYNC, randomToken, startRedis, waitFor } from '../helpers/servers.js';
import { stallAofFsync, freezerAvailable } from '../helpers/disk.js';

/** One field of INFO persistence, as a number. */
async function persistence(redis: Redis, field: string): Promise<number> {
  const info = await redis.info('persistence');
  const line = info.split('\r\n').find((l) => l.startsWith(`${field}:`));
  if (line === undefined) throw new Error(`INFO persistence has no ${field}`);
  return Number(line.slice(field.length + 1));
}

t.test('Redis whose disk stalls its fsync: every acknowledged commit survives a SIGKILL and a restart from its own files', { skip: freezerAvailable() ? false : 'no cgroup v1 freezer here (/sys/fs/cgroup/freezer)' }, async (t) => {
  const redis = await startRedis(t);
  const before = new Redis(redis.url, { maxRetriesPerRequest: null });
  const prefix = `${randomToken()}:`;
  const store = createPartitionStore(before, prefix, 'stock', 0, ['items']);
  const epoch = await store.acquire();
  const commit = (cursor: number) => store.commit({ epoch, commits: cursor, cursor, local: 0, changes: new Map([['items', new Map([[`i${cursor}`, { stock: cursor, price: 1 }]])]]), outboxField: '', outbox: null, cleared: [] });

  const stall = await stallAofFsync(redis.pid!);
  t.teardown(() => stall.thaw());
  t.equal(await commit(1), true);
  // With `everysec` Redis fsyncs in the background: wait until an fsync is stuck on the stalled disk, which is when it
  // postpones writing what it acknowledges. (`always` fsyncs on the main thread before it answers; `no` never does.)
  if (DEFAULT_APPENDFSYNC === 'everysec') await waitFor(async () => (await persistence(before, 'aof_pending_bio_fsync')) > 0, { deadlineMs: 5000, intervalMs: 20, what: 'a background fsync of the AOF to be under way' });
  const COMMITS = 20;
  for (let cursor = 2; cursor <= COMMITS; cursor++) t.equal(await commit(cursor), true, `commit ${cursor} acknowledged`);
  t.comment(`appendfsync ${DEFAULT_APPENDFSYNC}: ${await persistence(before, 'aof_buffer_length')} bytes acknowledged and not yet written to the AOF when killed`);
  before.disconnect();
  redis.kill9();
  stall.thaw();
  await redis.restart();

  const after = new Redis(redis.url, { maxRetriesPerRequest: null });
  t.teardown(() => after.disconnect());
  const loaded = await createPartitionStore(after, prefix, 'stock', 0, ['items']).load();
  t.equal(loaded.cursor, COMMITS, 'the cursor of the last acknowledged commit is back');
  t.equal(loaded.tables.get('items')?.size, COMMITS, 'and every item it wrote');
});
