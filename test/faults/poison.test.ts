/**
 * A message that kills its worker takes its partition down twice at most, on any worker: once in a batch, once
 * taken alone, then it is quarantined (a dead letter, undecoded) and the commands after it apply. Workers are real
 * processes with faultKillAfter 'poison' (a client command about FAULT_POISON_ID kills the worker that applies it);
 * each restart is a new process, as when the worker dies or the partition moves to another worker.
 */
import { Redis } from 'ioredis';
import { connect } from 'nats';
import t, { type Test } from 'tap';
import { encode } from '../../src/codec.js';
import { FAULT_POISON_ID } from '../../src/datapath/batch-apply.js';
import { PoisonWatch } from '../../src/datapath/poison.js';
import { createLog } from '../../src/log.js';
import { names } from '../../src/protocol.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import { createPartitionStore, type PartitionStore } from '../../src/datapath/store.js';
import { startServers, testConfig, waitFor } from '../helpers/servers.js';
import { spawnRole, type Child } from '../helpers/stack.js';

t.test('a message that kills its worker: taken alone on the next start, quarantined on the one after; the commands around it apply once', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1, kinds: ['stock'] });
  const n = names(config.streamPrefix);
  const workers: Child[] = [];
  const start = () => {
    const child = spawnRole('worker', config, { SHOP_FAULT_KILL_AFTER: 'poison' });
    workers.push(child);
    t.teardown(() => child.kill('SIGKILL'));
    return child;
  };
  const nc = await connect({ servers: config.natsUrl });
  const client = createShopClient({ nc, config, log: createLog('test', 'error') });
  t.teardown(async () => {
    await client.close();
    await nc.close();
  });
  const first = start();
  t.ok((await client.command('stock', 0, { k: 'create', id: 'x', price: 1 })).ok);
  t.ok((await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 })).ok, 'add 1');

  // The poison, then add 3 and add 4 behind it, in the same stream.
  const js = nc.jetstream();
  const poison = encode({ c: { k: 'add', id: FAULT_POISON_ID, amount: 1 } });
  await js.publish(n.cmd('stock', 0), poison);
  const add3 = client.command('stock', 0, { k: 'add', id: 'x', amount: 3 });
  const add4 = client.command('stock', 0, { k: 'add', id: 'x', amount: 4 });
  t.equal(await first.exited, 'SIGKILL', 'the worker died of the poison (in a batch)');
  const second = start();
  t.equal(await second.exited, 'SIGKILL', 'the next worker took it alone and died of it once more');
  const third = start();
  t.equal((await add3).ok, true, 'the third worker quarantined it: add 3 is applied and answered');
  t.equal((await add4).ok, true, 'add 4 too');
  t.same(await client.query('stock', 0, { k: 'find', id: 'x' }), { ok: true, v: { stock: 8, price: 1 } }, '1 + 3 + 4: each applied once');

  const jsm = await nc.jetstreamManager();
  await waitFor(async () => (await jsm.streams.info(n.deadLetterStream)).state.messages === 1, { deadlineMs: 10_000, what: 'the dead letter to be stored' });
  const copy = await jsm.streams.getMessage(n.deadLetterStream, { last_by_subj: n.deadLetter('stock', 0) });
  t.equal(copy.header.get('Shop-Reason'), 'quarantined', 'one dead letter, quarantined');
  t.match(copy.header.get('Shop-Detail'), /taken 2 times without being committed \(1 of them alone\)/, 'saying why');
  t.same(Buffer.from(copy.data), Buffer.from(poison), 'holding the message as it arrived, undecoded');
  t.ok((await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 })).ok, 'the partition serves on');
  t.equal(third.process.exitCode, null, 'and its worker lives');
  t.equal(workers.length, 3);
  t.equal((await jsm.streams.info(n.stream('stock'))).state.consumer_count, 1, 'the consumers of the two dead workers were deleted on takeover');
});

/** A partition's store on a redis-server of its own (stopped, and the connection closed, in teardown). */
async function storeOnRedis(t: Test, prefix: string): Promise<PartitionStore> {
  const { redis: server } = await startServers(t);
  const redis = new Redis(server.url);
  t.teardown(() => redis.disconnect());
  return createPartitionStore(redis, prefix, 'stock', 0, ['items']);
}

t.test('the attempt record: who counts, who does not, and a commit that moves the cursor starts it over', async (t) => {
  const store = await storeOnRedis(t, 'poison-test:');
  const epoch = await store.acquire();
  const at = (cursor: number, token: string, what: 'start' | 'fault' | 'solo') => store.attempt(epoch, cursor, token, what);
  t.same(await at(0, 'A', 'start'), { starts: 1, solos: 0 }, 'a first start');
  t.same(await at(0, 'A', 'start'), { starts: 1, solos: 0 }, 'the same runner again, after a failure it saw (Redis away): not counted');
  t.same(await at(0, 'B', 'start'), { starts: 2, solos: 0 }, 'another runner (A died, or the partition moved): counted');
  t.same(await at(0, 'B', 'solo'), { starts: 2, solos: 1 }, 'B takes the message alone');
  t.same(await at(0, 'B', 'start'), { starts: 2, solos: 0 }, 'B survived its attempt alone (its commit failed): taken back');
  t.same(await at(0, 'B', 'solo'), { starts: 2, solos: 1 });
  t.same(await at(0, 'C', 'start'), { starts: 3, solos: 1 }, 'B died alone with it: C quarantines it');
  t.same(await at(0, 'C', 'fault'), { starts: 4, solos: 1 }, 'a batch that threw counts, whoever restarts');
  t.equal(await store.commit({ epoch, commits: 1, cursor: 5, local: 0, changes: new Map(), outboxField: '', outbox: null, cleared: [] }), true);
  t.same(await at(5, 'C', 'start'), { starts: 2, solos: 0 }, 'a commit that moves the cursor starts over, counting its owner as one start');
  t.equal(await store.attempt(epoch - 1, 5, 'D', 'start'), null, 'an older epoch records nothing');
});

t.test('a partition that changes hands again and again before its owners commit: no good message becomes a dead letter', async (t) => {
  // As in the split brain of split-brain.test.ts, where order-0 changed hands 14 times in a second and its stream
  // message 88 was passed as a poison. Each owner here raises the epoch (fencing the one before), loads, starts
  // its reads; every other one gets as far as taking the message (and alone, when the count says so) before the next
  // one fences it. Each lets go alive: fenced at its commit, or told to stop.
  const store = await storeOnRedis(t, 'poison-moves:');
  const log = createLog('test', 'error');
  const first = { seq: 6, data: new Uint8Array() };
  let epoch = await store.acquire();
  t.equal(await store.commit({ epoch, commits: 1, cursor: 5, local: 0, changes: new Map(), outboxField: '', outbox: null, cleared: [] }), true, 'an owner commits up to 5');
  const committer = new PoisonWatch(store, log);
  committer.moved(5);
  for (let owner = 1; owner <= 8; owner++) {
    epoch = await store.acquire(); // the next owner fences the one before
    const watch = new PoisonWatch(store, log);
    watch.started();
    if (owner % 2 === 0) {
      t.equal(watch.mustRecord(1), true, `owner ${owner} records its start before it takes the message`);
      t.equal(await watch.record(epoch, 5), true);
      t.equal(watch.quarantined(6), undefined, `owner ${owner} does not take the message for a poison`);
      if (watch.suspect(first)) t.equal(await watch.takeAlone(epoch), true, `owner ${owner} takes it alone`);
    } else {
      t.equal(watch.mustRecord(0), false, `owner ${owner} has nothing in line: nothing to record`);
    }
    if (owner === 3) await committer.left(5); // the committer is told to stop late: others counted since, it withdraws nothing
    await watch.left(5);
  }
  const last = new PoisonWatch(store, log);
  last.started();
  t.equal(await last.record(epoch, 5), true);
  t.equal(last.quarantined(6), undefined, 'the next owner applies the message, not passes it');
  t.equal(last.suspect(first), true, 'alone: the committer, which could not withdraw, and this owner count');
  t.same(await store.attempt(epoch, 5, 'other', 'start'), { starts: 3, solos: 0 }, 'counted: the committer, the last owner, and this one');
});

t.test('an owner that dies counts, one that leaves alive withdraws only its own count', async (t) => {
  const store = await storeOnRedis(t, 'poison-withdraw:');
  const epoch = await store.acquire();
  t.same(await store.attempt(epoch, 0, 'A', 'start'), { starts: 1, solos: 0 });
  t.same(await store.attempt(epoch, 0, 'B', 'start'), { starts: 2, solos: 0 }, 'A died: B counts');
  t.equal(await store.withdraw(0, 'A'), false, 'A cannot withdraw once B counted');
  t.same(await store.attempt(epoch, 0, 'B', 'solo'), { starts: 2, solos: 1 });
  t.equal(await store.withdraw(0, 'B'), true, 'B let go alive after its attempt alone');
  t.equal(await store.withdraw(0, 'B'), false, 'once');
  t.same(await store.attempt(epoch, 0, 'C', 'start'), { starts: 2, solos: 0 }, 'B withdrew its start and its attempt alone');
  t.equal(await store.withdraw(1, 'C'), false, 'not at another cursor');
});
