/**
 * Dynamic placement under load, with worker processes: kill -9 in a checkout storm, a third worker joining and
 * leaving by drain, a worker paused past its lease. Each prints its measured figures as a tap comment.
 */
import { Redis } from 'ioredis';
import t from 'tap';
import { actorOf } from '../../src/actors/index.js';
import type { Kind } from '../../src/config.js';
import { createPartitionStore } from '../../src/datapath/store.js';
import { audit, p99During, seedShop, startCluster, storm, timeUntilServing, type Shop } from '../helpers/cluster.js';
import { logLines } from '../helpers/logs.js';
import { waitFor } from '../helpers/servers.js';

const SHOP: Shop = { items: 100, stock: 8, users: 100, credit: 8, orders: 20_000, price: 1 };

t.test('kill -9 of a worker in a checkout storm: its partitions are owned and serving again within 3 s, every checkout gets its committed outcome', async (t) => {
  const c = await startCluster(t);
  const workers = [0, 1].map((i) => c.spawnWorker(i));
  await c.waitSettled('two workers to share the partitions');
  await seedShop(c, SHOP);
  const load = storm(c, SHOP);
  await load.answered(300);

  const before = await c.status();
  const victim = before.status.workers[0]!;
  const victimChild = workers.find((w) => w.process.pid === victim.pid)!;
  const theirs = before.status.partitions.filter((p) => p.owner === victim.id);
  t.ok(theirs.length > 0, `the victim ${victim.id} owns ${theirs.length} partitions`);
  const killedAt = performance.now();
  victimChild.process.kill('SIGKILL');
  const servingMs = await timeUntilServing(c.nc, c.config, theirs, killedAt);
  const after = await c.waitSettled('every partition owned again');
  const ownedMs = performance.now() - killedAt;
  t.ok(after.status.partitions.every((p) => p.owner !== victim.id), 'no partition is left on the dead worker');
  t.ok(servingMs <= 3000, `its partitions answer again ${Math.round(servingMs)} ms after the kill (goal 3000 ms)`);

  await load.answered(200);
  const answers = await load.stop();
  const result = await audit(c, SHOP, answers);
  t.comment(`kill -9 failover: serving again after ${Math.round(servingMs)} ms, status settled after ${Math.round(ownedMs)} ms; ` + JSON.stringify(result));
  t.ok(result.checkouts > 200, `a storm: ${result.checkouts} checkouts`);
  t.equal(result.failed, 0, 'no checkout failed (no 5xx, no lost answer)');
  t.equal(result.wrong, 0, 'every answer is the committed outcome of its order');
  t.ok(result.paid > 0 && result.refused > 0, 'both outcomes occurred');
  t.ok(result.stockConserved, 'stock is conserved');
  t.ok(result.creditConserved, 'credit is conserved');
  await Promise.all(workers.map((w) => w.kill('SIGTERM')));
});

t.test('kill -9 of a worker whose lease is long: the leader finds its process gone by a probe and moves its partitions without waiting out the lease', async (t) => {
  const LEASE_MS = 10_000;
  const c = await startCluster(t, { workerLeaseMs: LEASE_MS });
  const workers = [0, 1].map((i) => c.spawnWorker(i));
  await c.waitSettled('two workers to share the partitions');
  await seedShop(c, SHOP);
  const load = storm(c, SHOP);
  await load.answered(200);

  const before = await c.status();
  const victim = before.status.workers.find((w) => w.id !== before.leader)!;
  const victimChild = workers.find((w) => w.process.pid === victim.pid)!;
  const survivor = workers.find((w) => w !== victimChild)!;
  const theirs = before.status.partitions.filter((p) => p.owner === victim.id);
  const killedAt = performance.now();
  victimChild.process.kill('SIGKILL');
  const servingMs = await timeUntilServing(c.nc, c.config, theirs, killedAt);
  t.ok(servingMs < LEASE_MS, `its ${theirs.length} partitions answer again ${Math.round(servingMs)} ms after the kill, within its ${LEASE_MS} ms lease`);
  const probed = logLines(survivor.output()).find((l) => l.msg.includes('nothing answers its probe'));
  t.ok(probed, 'the leader said it found the worker gone by its probe');
  t.equal(probed?.worker, victim.id, 'that worker');

  await load.answered(100);
  const result = await audit(c, SHOP, await load.stop());
  t.comment(`kill -9 with a ${LEASE_MS} ms lease: serving again after ${Math.round(servingMs)} ms; ` + JSON.stringify(result));
  t.equal(result.failed, 0, 'no checkout failed');
  t.equal(result.wrong, 0, 'every answer is the committed outcome of its order');
  t.ok(result.stockConserved && result.creditConserved, 'stock and credit are conserved');
  await survivor.kill('SIGTERM');
});

t.test('a third worker under load takes a fair share; drained, its partitions leave before it exits, and no request fails', async (t) => {
  const c = await startCluster(t);
  [0, 1].forEach((i) => c.spawnWorker(i));
  await c.waitSettled('two workers to share the partitions');
  await seedShop(c, SHOP);
  const load = storm(c, SHOP);
  await load.answered(200);

  const third = c.spawnWorker(2);
  let joined!: Awaited<ReturnType<typeof c.status>>;
  await waitFor(
    async () => {
      joined = await c.status();
      const mine = joined.status.workers.find((w) => w.pid === third.process.pid);
      return mine !== undefined && mine.partitions > 0 && joined.moving.size === 0;
    },
    { deadlineMs: 15_000, intervalMs: 50, what: 'the third worker to take partitions' },
  );
  const total = c.config.partitions * c.config.kinds.length;
  const shares = joined.status.workers.map((w) => w.partitions);
  t.equal(shares.length, 3, 'three workers');
  t.ok(Math.max(...shares) - Math.min(...shares) <= c.config.kinds.length, `a fair share each: ${shares.join(', ')} of ${total}`);
  const newId = joined.status.workers.find((w) => w.pid === third.process.pid)!.id;

  await load.answered(200);
  const drained = await c.shopctl('drain', newId);
  t.equal(drained.code, 0, `shopctl drain succeeded: ${drained.stdout.trim()} ${drained.stderr.trim()}`);
  const afterDrain = await c.status();
  t.notOk(afterDrain.status.partitions.some((p) => p.owner === newId), 'no partition is placed on the drained worker when drain answers');
  t.equal(await third.exited, '0', 'then the drained worker exits by itself, cleanly');
  await c.waitSettled('the two remaining workers to run everything');

  await load.answered(100);
  const result = await audit(c, SHOP, await load.stop());
  t.comment(`join + drain under load: ${JSON.stringify(result)}`);
  t.equal(result.failed, 0, 'no request failed');
  t.equal(result.wrong, 0);
  t.ok(result.stockConserved && result.creditConserved, 'stock and credit conserved');
});

t.test('shopctl move of a hot partition under load, again and again: conservation holds; status --json has the documented shape', async (t) => {
  const c = await startCluster(t);
  [0, 1].forEach((i) => c.spawnWorker(i));
  await c.waitSettled('two workers to share the partitions');
  // One hot order partition: every order of the storm lives there, so every checkout waits on it.
  await seedShop(c, SHOP);
  const load = storm(c, SHOP);
  await load.answered(100);
  const moves: number[] = [];
  const windows: [number, number][] = [];
  for (let i = 0; i < 6; i++) {
    // A busy machine can delay a heartbeat past the status's view: wait until both workers are in it.
    let target: { id: string } | undefined;
    let hotEpoch = 0;
    await waitFor(
      async () => {
        const { status } = await c.status();
        const hot = status.partitions.find((p) => p.kind === 'order' && p.partition === 0)!;
        hotEpoch = hot.epoch;
        target = hot.owner === null ? undefined : status.workers.find((w) => w.id !== hot.owner);
        return target !== undefined;
      },
      { deadlineMs: 30_000, intervalMs: 100, what: 'a live worker other than the hot partition’s owner' },
    );
    const started = performance.now();
    const moved = await c.shopctl('move', 'order', '0', target!.id);
    moves.push(performance.now() - started);
    windows.push([started, performance.now()]);
    t.equal(moved.code, 0, `move ${i + 1}: ${moved.stdout.trim()}${moved.stderr.trim()}`);
    const now = (await c.status()).status.partitions.find((p) => p.kind === 'order' && p.partition === 0)!;
    t.equal(now.owner, target!.id, 'the partition is on the target');
    t.ok(now.epoch > hotEpoch, 'with a newer epoch');
    await load.answered(50);
  }
  const json = await c.shopctl('status', '--json');
  const parsed = JSON.parse(json.stdout) as { workers: object[]; partitions: object[] };
  t.same(Object.keys(parsed), ['workers', 'partitions']);
  t.same(Object.keys(parsed.workers[0]!), ['id', 'pid', 'host', 'partitions']);
  t.same(Object.keys(parsed.partitions[0]!), ['kind', 'partition', 'owner', 'epoch', 'lag', 'state', 'deadLetters']);
  t.equal(parsed.partitions.length, c.config.partitions * c.config.kinds.length);
  const table = await c.shopctl('status');
  t.match(table.stdout, /WORKER\s+HOST\s+PID\s+PARTITIONS/);
  t.match(table.stdout, /KIND\s+PARTITION\s+OWNER\s+EPOCH\s+LAG/);

  const answers = await load.stop();
  const result = await audit(c, SHOP, answers);
  const during = p99During(answers, windows);
  t.comment(`6 moves of order.0 under load: shopctl round trips ${moves.map(Math.round).join(', ')} ms; p99 of the ${during.requests} checkouts in flight during a move ${during.p99Ms} ms; all checkouts ${JSON.stringify(result)}`);
  t.equal(result.failed, 0, 'no request failed');
  t.equal(result.wrong, 0);
  t.ok(result.stockConserved && result.creditConserved, 'stock and credit conserved');
});

t.test('a worker paused (SIGSTOP) past its lease loses its partitions; resumed, it writes nothing and exits', async (t) => {
  const c = await startCluster(t);
  // At debug level a worker logs each partition it takes ('owned'): what the end of this test looks for.
  const workers = [0, 1].map((i) => c.spawnWorker(i, { SHOP_LOG_LEVEL: 'debug' }));
  await c.waitSettled('two workers to share the partitions');
  await seedShop(c, SHOP);
  const load = storm(c, SHOP);
  await load.answered(200);

  const before = await c.status();
  const paused = before.status.workers[0]!;
  const child = workers.find((w) => w.process.pid === paused.pid)!;
  const held = before.status.partitions.filter((p) => p.owner === paused.id);
  const stoppedAt = performance.now();
  child.process.kill('SIGSTOP');
  let after!: Awaited<ReturnType<typeof c.status>>;
  await waitFor(
    async () => {
      after = await c.status();
      return after.moving.size === 0 && !after.status.partitions.some((p) => p.owner === paused.id);
    },
    { deadlineMs: 15_000, intervalMs: 50, what: 'the other worker to take the paused one’s partitions' },
  );
  t.comment(`SIGSTOP: partitions running elsewhere ${Math.round(performance.now() - stoppedAt)} ms after the pause`);

  // Every partition it held is fenced in Redis: the epoch stored there is newer than the one it holds.
  const redis = new Redis(c.config.redisUrl);
  t.teardown(() => redis.disconnect());
  for (const p of held) {
    const store = createPartitionStore(redis, c.config.redisPrefix, p.kind as Kind, p.partition, actorOf(p.kind as Kind).tables);
    const now = after.status.partitions.find((q) => q.kind === p.kind && q.partition === p.partition)!;
    t.ok((await store.epoch()) === now.epoch && now.epoch > p.epoch, `${p.kind}.${p.partition}: stored epoch ${now.epoch} > the paused worker's ${p.epoch}`);
  }

  child.process.kill('SIGCONT');
  t.equal(await child.exited, '1', 'resumed, it finds its lease lost and exits (the supervisor would start a fresh worker)');
  const lines = logLines(child.output());
  const lost = lines.findIndex((l) => l.msg.startsWith('lease lost'));
  t.ok(lost >= 0 && lines[lost]!.level === 'error', 'it logged the lost lease as an error');
  t.ok(lines.slice(0, lost).some((l) => l.msg === 'owned'), 'before the pause it logged the partitions it took');
  t.same(lines.slice(lost).filter((l) => l.msg === 'placed' || l.msg === 'owned').map((l) => l.msg), [], 'it took nothing after resuming');

  await load.answered(100);
  const result = await audit(c, SHOP, await load.stop());
  const final = await c.status();
  t.notOk(final.status.partitions.some((p) => p.owner === paused.id), 'nothing was placed on it again');
  t.comment(`SIGSTOP past the lease: ${JSON.stringify(result)}`);
  t.equal(result.failed, 0, 'no request failed');
  t.equal(result.wrong, 0);
  t.ok(result.stockConserved && result.creditConserved, 'stock and credit conserved: the paused worker overwrote nothing');
});
