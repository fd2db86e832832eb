/**
 * How long loading one large partition from Redis blocks the worker's event loop: fills one partition with N
 * entities (stock items, as batch_init stores them) in a redis-server of its own (temporary dir, free port), then
 * runs the store's load() ROUNDS times while a 10 ms timer and perf_hooks.monitorEventLoopDelay watch the event loop.
 * Prints, per round, the load time and the longest stall (the largest gap between two timer ticks past their due
 * time, and the histogram's max); then the median of the rounds.
 *
 *   npm run build && node dist/bench/load-stall.js [entities (600000)] [rounds (3)]
 *
 * A stall longer than a worker's lease less one heartbeat interval makes the worker give up its partitions
 * (docs/cluster.md, Placement and failover): the load must stay well below that however large the partition.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { encode } from '../src/codec.js';
import { reapDirOnExit, redisArgs, spawnChild, stopChild } from '../src/stack/processes.js';
import { freePort, redisAnswers, waitFor } from '../src/stack/probes.js';
import { createPartitionStore } from '../src/datapath/store.js';

/** Tick of the watching timer: a stall is how much later than this a tick comes. */
const TICK_MS = 10;
/** Entities written per pipelined HSET while filling. */
const FILL_CHUNK = 5000;

const entities = Number(process.argv[2] ?? 600_000);
const rounds = Number(process.argv[3] ?? 3);

const dir = await mkdtemp(join(tmpdir(), 'shop-load-stall-'));
reapDirOnExit(dir);
const port = await freePort();
const server = spawnChild('redis', 'redis-server', { args: redisArgs({ port, dir, appendfsync: 'no' }) });
try {
  await waitFor(() => redisAnswers(port), { deadlineMs: 10_000, what: `redis-server on ${port}` });
  const redis = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: null });
  const store = createPartitionStore(redis, 'bench:', 'stock', 0, ['items', 'ledger']);
  const t0 = performance.now();
  for (let at = 0; at < entities; at += FILL_CHUNK) {
    const args: (string | Buffer)[] = [];
    for (let i = at; i < Math.min(entities, at + FILL_CHUNK); i++) args.push(String(i), Buffer.from(encode({ stock: 100, price: 1 })));
    await redis.hset(store.keys.table('items'), ...args);
  }
  await store.acquire();
  console.log(`filled ${entities} items in ${Math.round(performance.now() - t0)} ms`);

  const results: { loadMs: number; stallMs: number; histMaxMs: number }[] = [];
  for (let r = 0; r < rounds; r++) {
    const histogram = monitorEventLoopDelay({ resolution: TICK_MS });
    let last = performance.now();
    let stallMs = 0;
    let over50 = 0;
    let stalledMs = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      const late = now - last - TICK_MS;
      stallMs = Math.max(stallMs, late);
      if (late > 50) (over50++, (stalledMs += late));
      last = now;
    }, TICK_MS);
    histogram.enable();
    const start = performance.now();
    const loaded = await store.load();
    const loadMs = performance.now() - start;
    histogram.disable();
    clearInterval(timer);
    const size = loaded.tables.get('items')?.size;
    if (size !== entities) throw new Error(`loaded ${size} items, expected ${entities}`);
    results.push({ loadMs: Math.round(loadMs), stallMs: Math.round(stallMs), histMaxMs: Math.round(histogram.max / 1e6) });
    console.log(
      `round ${r + 1}: load ${Math.round(loadMs)} ms, longest stall ${Math.round(stallMs)} ms, ${over50} stalls over 50 ms (${Math.round(stalledMs)} ms in all); ` +
        `event-loop delay max ${Math.round(histogram.max / 1e6)} ms, p99 ${Math.round(histogram.percentile(99) / 1e6)} ms`,
    );
    // Let the last round's garbage go before the next one measures.
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(
    `median of ${rounds}: load ${median(results.map((x) => x.loadMs))} ms, longest stall ${median(results.map((x) => x.stallMs))} ms, event-loop delay max ${median(results.map((x) => x.histMaxMs))} ms (${entities} entities)`,
  );
  redis.disconnect();
} finally {
  await stopChild(server, 5000);
  await rm(dir, { recursive: true, force: true });
  reapDirOnExit(dir, false);
}
