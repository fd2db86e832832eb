/**
 * Two controllers at once, each cut off from a different worker, so they disagree about where partitions go and
 * keep moving them. Every committed batch of every runner is recorded (which worker, epoch, cursor range): for
 * each partition the committed ranges must form one chain, i.e. no two writers ever committed on top of the same
 * state, and the epochs along the chain never go back.
 */
import { Redis } from 'ioredis';
import { connect } from 'nats';
import t from 'tap';
import type { Kind } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { startController } from '../../src/placement/controller.js';
import type { RunnerMetrics } from '../../src/datapath/runner-metrics.js';
import { startWorker, type Worker } from '../../src/placement/worker.js';
import { audit, seedShop, startCluster, storm, type Shop } from '../helpers/cluster.js';
import { waitFor } from '../helpers/servers.js';

const SHOP: Shop = { items: 100, stock: 8, users: 100, credit: 8, orders: 20_000, price: 1 };
/** The split lasts until the two controllers have written this many placements (about what 4 s of it gave). */
const SPLIT_WRITES = 400;

/**
 * Where a partition stands: its cursor and its count of commands received from within its worker. Every committed
 * batch moves it forward (a batch of in-worker commands only leaves the cursor where it was).
 */
type Position = [cursor: number, local: number];
const samePosition = (a: Position, b: Position) => a[0] === b[0] && a[1] === b[1];
const byPosition = (a: Position, b: Position) => a[0] - b[0] || a[1] - b[1];

interface Commit {
  worker: number;
  kind: Kind;
  partition: number;
  epoch: number;
  from: Position;
  to: Position | undefined;
}

t.test('two controllers at once (a forced split brain): partitions change hands, but never two writers of one partition', async (t) => {
  const c = await startCluster(t, { partitions: 4 });
  const log = createLog('split', 'error');
  const commits: Commit[] = [];
  const workers: Worker[] = [];
  for (let i = 0; i < 3; i++) {
    const nc = await connect({ servers: c.config.natsUrl });
    const redis = new Redis(c.config.redisUrl, { maxRetriesPerRequest: null });
    let self: Worker | undefined;
    const record: RunnerMetrics = {
      batch(kind, partition) {
        const r = self!.runner(kind, partition)!;
        const commit: Commit = { worker: i, kind, partition, epoch: r.epoch, from: [r.cursor, r.local], to: undefined };
        commits.push(commit);
        // The runner moves its cursor and local count right after reporting the commit, in the same turn.
        queueMicrotask(() => (commit.to = [r.cursor, r.local]));
      },
      sagaOutcome() {},
    };
    self = await startWorker({ nc, redis, config: { ...c.config, workerIndex: i }, log, metrics: record, controller: false });
    workers.push(self);
    t.teardown(async () => {
      await self!.close();
      await nc.close();
      redis.disconnect();
    });
  }
  const ids = workers.map((w) => w.id);
  // Controller A cannot see worker 2, controller B cannot see worker 0: each moves partitions off "its" dead one.
  const cnc = await connect({ servers: c.config.natsUrl });
  t.teardown(() => cnc.close());
  const a = await startController({ nc: cnc, config: c.config, log, id: 'controller-a', elect: false, ignore: (w) => w === ids[2] });
  await c.waitSettled('controller A to place every partition');
  await seedShop(c, SHOP);
  const load = storm(c, SHOP);
  await load.answered(100);
  const b = await startController({ nc: cnc, config: c.config, log, id: 'controller-b', elect: false, ignore: (w) => w === ids[0] });
  const splitAt = performance.now();
  // Until the fight has moved partitions for real: a partition committed by one worker, then by another.
  const handedOver = () => {
    const last = new Map<string, number>();
    for (const x of commits) {
      const k = `${x.kind}.${x.partition}`;
      if (last.has(k) && last.get(k) !== x.worker) return true;
      last.set(k, x.worker);
    }
    return false;
  };
  await waitFor(() => a.writes() + b.writes() >= SPLIT_WRITES && handedOver(), { deadlineMs: 60_000, intervalMs: 20, what: `the two controllers to write ${SPLIT_WRITES} placements and a partition to change hands` });
  const splitMs = Math.round(performance.now() - splitAt);
  // The split ends: one controller is left, and everything settles on the workers it sees.
  await b.close();
  await c.waitSettled('one controller to settle the placement', 20_000);
  await load.answered(100);
  const answers = await load.stop();
  await a.close();
  const moves = a.writes() + b.writes();

  const result = await audit(c, SHOP, answers);
  t.comment(`split brain for ${splitMs} ms: ${moves} placement writes by the two controllers, ${commits.length} commits; ${JSON.stringify(result)}`);
  t.ok(moves > c.config.partitions * c.config.kinds.length + 10, `the controllers fought: ${moves} placement writes`);

  let breaks = 0;
  let handovers = 0;
  for (const kind of c.config.kinds) {
    for (let p = 0; p < c.config.partitions; p++) {
      const chain = commits.filter((x) => x.kind === kind && x.partition === p).sort((x, y) => byPosition(x.from, y.from));
      for (let i = 1; i < chain.length; i++) {
        const [prev, next] = [chain[i - 1]!, chain[i]!];
        if (!prev.to || !samePosition(next.from, prev.to) || next.epoch < prev.epoch) {
          breaks++;
          t.fail(`${kind}.${p}: commit ${JSON.stringify(next)} does not continue ${JSON.stringify(prev)}`);
        }
        if (next.worker !== prev.worker) handovers++;
      }
    }
  }
  t.equal(breaks, 0, 'every partition has one chain of commits: never two writers on top of the same state');
  t.ok(handovers > 0, `writers did change: ${handovers} handovers between committed batches`);
  t.equal(result.failed, 0, 'no request failed');
  t.equal(result.wrong, 0, 'every answer is the committed outcome');
  t.ok(result.stockConserved && result.creditConserved, 'stock and credit conserved');
});
