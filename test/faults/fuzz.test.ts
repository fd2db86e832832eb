/**
 * Issue 19's fuzz test against a real stack: a worker process (dynamic placement, its lease and heartbeats), servers
 * with the shop's NATS permissions, and a publisher holding a gateway's credentials that sends issue 19's crafted
 * messages and msgpack-shaped garbage with extreme headers on every subject a gateway may publish to, interleaved
 * with valid commands. Asserted: the worker never exits and never loses a partition (epochs unchanged, no restart),
 * its event loop's longest delay during the fuzz stays under 250 ms (shop_event_loop_delay_max_seconds; the goal is
 * 100 ms, printed), every valid
 * command is applied exactly once and answered, and every bad message on a command subject is one dead letter.
 */
import fc from 'fast-check';
import { connect } from 'nats';
import t from 'tap';
import { readDeadLetters } from '../../src/admin/dead-letters.js';
import { KINDS } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { BUNDLE_MAX, names } from '../../src/protocol.js';
import { natsOptions } from '../../src/transport/connect.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import { crafted, garbage } from '../helpers/msgpack-garbage.js';
import { freePort, randomToken, startServers, testConfig, waitFor } from '../helpers/servers.js';
import { spawnRole } from '../helpers/stack.js';

/** Random garbage messages per subject (on top of every crafted one). */
const RANDOM_PER_SUBJECT = 40;
/**
 * Longest event-loop delay allowed while the garbage is taken: a lease is 1.5 s, a heartbeat every 250 ms. Issue 19's
 * goal is 100 ms (EVENT_LOOP_DELAY_GOAL_S, printed with the figure); the assertion allows 250 ms, because on 2 cores
 * beside the rest of the suite the worker is descheduled for that long without any long task of its own (measured:
 * 19 to 108 ms over 13 runs under load, 33 and 56 ms in full runs). What the issue found took 423 ms to 8 s.
 */
const EVENT_LOOP_DELAY_MAX_S = 0.25;
const EVENT_LOOP_DELAY_GOAL_S = 0.1;

/** One metric's samples from Prometheus text: labels (as text) → value. */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`).exec(line);
    if (m) out.set(m[1] ?? '', Number(m[2]));
  }
  return out;
}

t.test('crafted and random bytes on every subject a gateway may publish to, between valid commands: nothing stops, every valid command applies once, every bad one is a dead letter', async (t) => {
  const prefix = randomToken();
  const { nats, redis, users } = await startServers(t, { auth: true, prefix });
  const adminPort = await freePort();
  const config = testConfig(nats, redis, {
    streamPrefix: prefix,
    natsUser: users.worker.user,
    natsPassword: users.worker.password,
    redisUser: users.redis.user,
    redisPassword: users.redis.password,
    placement: 'dynamic',
    partitions: 2,
    workerProcesses: 1,
    adminPort,
    logLevel: 'error',
  });
  const worker = spawnRole('worker', config);
  t.teardown(() => worker.kill('SIGKILL'));
  const scrape = async () => (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();

  // The publisher: a gateway's credentials, nothing more.
  const gatewayConfig = { ...config, natsUser: users.gateway.user, natsPassword: users.gateway.password };
  const gw = await connect(natsOptions(gatewayConfig, 'fuzz', { maxReconnectAttempts: 0 }));
  const client = createShopClient({ nc: gw, config: gatewayConfig, log: createLog('test', 'error') });
  const admin = await connect(natsOptions({ ...config, natsUser: users.admin.user, natsPassword: users.admin.password }, 'fuzz-admin', { maxReconnectAttempts: 0 }));
  t.teardown(async () => {
    await client.close();
    await gw.close();
    await admin.close();
  });
  const n = names(config.streamPrefix);

  for (let p = 0; p < config.partitions; p++) {
    t.ok((await client.command('stock', p, { k: 'create', id: 'x', price: 1 })).ok);
    t.ok((await client.command('payment', p, { k: 'create', id: 'x' })).ok);
  }
  await waitFor(async () => samples(await scrape(), 'shop_partition_epoch').size === KINDS.length * config.partitions, { deadlineMs: 30_000, what: 'the worker to own every partition' });
  const owned = samples(await scrape(), 'shop_partition_epoch'); // the scrape also opens the event-loop window

  const subjects = KINDS.flatMap((kind) => Array.from({ length: config.partitions }, (_, p) => ({ kind, p })));
  const randoms = fc.sample(garbage, { numRuns: RANDOM_PER_SUBJECT * subjects.length, seed: 19 });
  const bad: Uint8Array[] = [...crafted().map(([, bytes]) => bytes)];
  const expected = new Map<string, number>();
  const valid: Promise<{ ok: boolean }>[] = [];
  let onCommandSubjects = 0;
  let r = 0;
  for (const { kind, p } of subjects) {
    for (const bytes of [...bad, ...randoms.slice(r, (r += RANDOM_PER_SUBJECT))]) {
      gw.publish(n.cmd(kind, p), bytes);
      onCommandSubjects++;
      gw.publish(n.get(kind, p), bytes);
      gw.publish(n.resend, bytes);
      gw.publish(n.cmd(kind, config.partitions), bytes); // a partition the shop does not have: no stream takes it
      if (kind === 'order') {
        valid.push(client.query('order', p, { k: 'find', id: 'none' }).then((reply) => ({ ok: !reply.ok && reply.code === 'not_found' })));
        continue;
      }
      const amount = 1 + (onCommandSubjects % 5);
      expected.set(`${kind}.${p}`, (expected.get(`${kind}.${p}`) ?? 0) + amount);
      valid.push(client.command(kind, p, kind === 'stock' ? { k: 'add', id: 'x', amount } : { k: 'addFunds', id: 'x', amount }));
    }
  }
  const replies = await Promise.all(valid);
  t.equal(replies.filter((reply) => reply.ok).length, valid.length, `all ${valid.length} valid commands and reads between the garbage were answered as they should`);
  for (let p = 0; p < config.partitions; p++) {
    t.same(await client.query('stock', p, { k: 'find', id: 'x' }), { ok: true, v: { stock: expected.get(`stock.${p}`), price: 1 } }, `stock.${p}: each valid add applied exactly once`);
    t.same(await client.query('payment', p, { k: 'find', id: 'x' }), { ok: true, v: { credit: expected.get(`payment.${p}`) } }, `payment.${p}: likewise`);
  }

  // Every bad message on a command subject is one dead letter (a bundle of bad commands is one per command: counted
  // here by stream message).
  const deadMessages = async () => {
    const list = await readDeadLetters(admin, config, { limit: 10_000 });
    return new Set(list.map((d) => `${d.partition}:${Math.floor(Number(d.command) / BUNDLE_MAX)}`)).size;
  };
  await waitFor(async () => (await deadMessages()) === onCommandSubjects, { deadlineMs: 30_000, what: `${onCommandSubjects} bad messages to be dead letters` });
  t.pass(`${onCommandSubjects} bad messages on the command subjects, each a dead letter`);

  const after = await scrape();
  const delay = samples(after, 'shop_event_loop_delay_max_seconds').get('')!;
  t.comment(`the worker's longest event-loop delay while it took the garbage: ${Math.round(delay * 1000)} ms (goal: under ${EVENT_LOOP_DELAY_GOAL_S * 1000} ms${delay < EVENT_LOOP_DELAY_GOAL_S ? ', met' : ', missed'})`);
  t.ok(delay < EVENT_LOOP_DELAY_MAX_S, `the worker's longest event-loop delay while it took the garbage: ${Math.round(delay * 1000)} ms (under ${EVENT_LOOP_DELAY_MAX_S * 1000} ms)`);
  t.same(samples(after, 'shop_partition_epoch'), owned, 'no partition changed hands (no lease lost)');
  t.equal([...samples(after, 'shop_partition_restarts_total').values()].reduce((a, b) => a + b, 0), 0, 'no partition restarted');
  t.equal(worker.process.exitCode, null, 'the worker process never exited');
  t.equal(worker.process.signalCode, null);
});
