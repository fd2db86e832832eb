/**
 * Loading a large partition keeps the event loop running: a worker's heartbeats, reads and commits of its other
 * partitions go on while one partition loads (store.load() reads its tables in chunks and decodes each on its own).
 */
import { Redis } from 'ioredis';
import t from 'tap';
import { encode } from '../../src/codec.js';
import { createPartitionStore } from '../../src/datapath/store.js';
import { randomToken, startRedis } from '../helpers/servers.js';

/** Entities in the partition's one table (stock items, as batch_init stores them). */
const ENTRIES = 600_000;
/** The watching timer's period. */
const TICK_MS = 10;
/**
 * Generous: the longest the timer may come late. With the default settings a worker whose heartbeats stop for a
 * lease less one interval (1,500 - 250 ms) gives up its partitions; a load must stay well clear of that. Loading
 * in chunks, the longest pause left is V8 growing the table's Map past 524,288 entries (one rehash of all of them,
 * ~100-180 ms on the 2-core machine this was written on); decoding the table in one go stalled for up to ~1 s on it
 * when busy (bench/load-stall.ts).
 */
const STALL_MAX_MS = 1000;
/** Entries written per HSET while filling. */
const FILL_CHUNK = 5000;

t.test('loading a partition of 600,000 entities: a 10 ms timer keeps firing throughout, and every entity is loaded', async (t) => {
  const server = await startRedis(t);
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  t.teardown(() => redis.disconnect());
  const store = createPartitionStore(redis, `${randomToken()}:`, 'stock', 0, ['items', 'ledger']);
  for (let at = 0; at < ENTRIES; at += FILL_CHUNK) {
    const args: (string | Buffer)[] = [];
    for (let i = at; i < Math.min(ENTRIES, at + FILL_CHUNK); i++) args.push(String(i), Buffer.from(encode({ stock: i, price: 1 })));
    await redis.hset(store.keys.table('items'), ...args);
  }
  await store.acquire();

  let last = performance.now();
  let worstMs = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    worstMs = Math.max(worstMs, now - last - TICK_MS);
    last = now;
    ticks++;
  }, TICK_MS);
  const started = performance.now();
  const loaded = await store.load();
  const loadMs = performance.now() - started;
  clearInterval(timer);

  const items = loaded.tables.get('items')!;
  t.equal(items.size, ENTRIES, 'every entity is loaded');
  t.ok([0, 1, ENTRIES - 1].every((i) => (items.get(String(i)) as { stock: number }).stock === i), 'and decoded');
  t.equal(loaded.tables.get('ledger')?.size, 0, 'an empty table loads empty');
  t.comment(`load of ${ENTRIES} entities: ${Math.round(loadMs)} ms, the timer fired ${ticks} times, at most ${Math.round(worstMs)} ms late`);
  t.ok(worstMs < STALL_MAX_MS, `the timer was never more than ${STALL_MAX_MS} ms late (at most ${Math.round(worstMs)} ms)`);
});
