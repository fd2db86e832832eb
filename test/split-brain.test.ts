/**
 * Two controllers at once, each cut off from a different worker, so they disagree about where partitions go and
 * keep moving them. Every committed batch of every runner is recorded (which worker, epoch, cursor range): for
 * each partition the committed ranges must form one chain, i.e. no two writers ever committed on top of the same
 * state, and the epochs along the chain never go back.
 */
import { Redis } from 'ioredis';
import { connect } from 'nats';
import t from 'tap';
import type { Kind } from '../src/config.js';
import { createLog } from '../src/log.js';
import { startController } from '../src/runtime/controller.js';
import type { RunnerMetrics } from '../src/runtime/metrics.js';
import { startWorker, type Worker } from '../src/runtime/worker.js';
import { audit, seedShop, startCluster, storm, type Shop } from './helpers/cluster.js';

const SHOP: Shop = { items: 100, stock: 8, users: 100, credit: 8, orders: 20_000, price: 1 };
const SPLIT_MS = 4000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Commit {
  worker: number;
  kind: Kind;
  partition: number;
  epoch: number;
  from: number;
  to: number;
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
        const commit: Commit = { worker: i, kind, partition, epoch: r.epoch, from: r.cursor, to: -1 };
        commits.push(commit);
        // The runner moves its cursor right after reporting the commit, in the same turn.
        queueMicrotask(() => (commit.to = r.cursor));
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
  await sleep(500);
  const b = await startController({ nc: cnc, config: c.config, log, id: 'controller-b', elect: false, ignore: (w) => w === ids[0] });
  await sleep(SPLIT_MS);
  // The split ends: one controller is left, and everything settles on the workers it sees.
  await b.close();
  await c.waitSettled('one controller to settle the placement', 20_000);
  await sleep(500);
  const answers = await load.stop();
  await a.close();
  const moves = a.writes() + b.writes();

  const result = await audit(c, SHOP, answers);
  t.comment(`split brain for ${SPLIT_MS} ms: ${moves} placement writes by the two controllers, ${commits.length} commits; ${JSON.stringify(result)}`);
  t.ok(moves > c.config.partitions * c.config.kinds.length + 10, `the controllers fought: ${moves} placement writes`);

  let breaks = 0;
  let handovers = 0;
  for (const kind of c.config.kinds) {
    for (let p = 0; p < c.config.partitions; p++) {
      const chain = commits.filter((x) => x.kind === kind && x.partition === p).sort((x, y) => x.from - y.from);
      for (let i = 1; i < chain.length; i++) {
        const [prev, next] = [chain[i - 1]!, chain[i]!];
        if (next.from !== prev.to || next.epoch < prev.epoch) {
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
