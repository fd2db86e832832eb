/**
 * A gateway's bundles per owning worker (transport/bundles.ts, owners.ts), against a real nats-server with a stand-in
 * worker on the command subjects: commands to partitions one worker runs (as its pulse says) leave as one stream
 * message on one of them, the others naming their partition; a command answered `elsewhere` is sent again to its
 * own partition, once, whatever copies of that answer come; without a pulse, one message per partition.
 */
import { connect, type Msg } from 'nats';
import t from 'tap';
import { decode, encode } from '../../src/codec.js';
import { ensureStreams } from '../../src/datapath/streams.js';
import { createLog } from '../../src/log.js';
import { fail, names, ok, type CommandEnvelope } from '../../src/protocol.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import { startServers, testConfig, waitFor } from '../helpers/servers.js';

t.test('bundles per owner: one stream message per worker and turn; elsewhere sends the command to its own partition once', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 8, kinds: ['stock'], gatewayBundles: 'owner' });
  const n = names(config.streamPrefix);
  const nc = await connect({ servers: config.natsUrl });
  t.teardown(() => nc.close());
  await ensureStreams(await nc.jetstreamManager(), config);
  const client = createShopClient({ nc, config, log: createLog('test', 'error') });
  t.teardown(() => client.close());

  // The stand-in worker: sees every command message (core NATS sees what the stream stores) and answers by hand.
  const seen: { subject: string; envelopes: CommandEnvelope[] }[] = [];
  const sub = nc.subscribe(n.cmd('stock', '*' as unknown as number), {
    callback: (_err, m: Msg) => {
      const body = decode(m.data) as CommandEnvelope | CommandEnvelope[];
      seen.push({ subject: m.subject, envelopes: Array.isArray(body) ? body : [body] });
    },
  });
  t.teardown(() => sub.unsubscribe());
  const answer = (e: CommandEnvelope, reply: unknown) => nc.publish(e.r!, encode(reply));

  // Without a pulse: one message per partition.
  const before = [client.command('stock', 3, { k: 'find', id: 'a' }), client.command('stock', 5, { k: 'find', id: 'b' })];
  await waitFor(() => seen.length === 2, { deadlineMs: 5000, what: 'the two commands' });
  t.same(seen.map((s) => [s.subject, s.envelopes.length]).sort(), [[n.cmd('stock', 3), 1], [n.cmd('stock', 5), 1]], 'no owner known: a message per partition');
  for (const s of seen) answer(s.envelopes[0]!, ok('first'));
  await Promise.all(before);
  seen.length = 0;

  // worker-a says it runs stock.3 and stock.5 (and stock.6, restarting: not a carrier's target).
  const held = [
    { k: 'stock', p: 3, e: 4, lag: 0 },
    { k: 'stock', p: 5, e: 2, lag: 0 },
    { k: 'stock', p: 6, e: 1, lag: 0, t: 'restarting', n: 1 },
  ];
  const pulse = { id: 'worker-a', seq: 1, at: Date.now(), pid: 1, host: 'h', kinds: ['stock'], adminPort: 0, draining: false, carries: true, held, stale: {} };
  nc.publish(n.pulse('worker-a'), new Uint8Array()); // an empty pulse: ignored
  nc.publish(n.pulse('worker-a'), new TextEncoder().encode(JSON.stringify(pulse)));
  await nc.flush(); // the client shares this connection: its subscription has the pulse once the flush returns

  const three = client.command('stock', 3, { k: 'find', id: 'c' });
  const five = client.command('stock', 5, { k: 'find', id: 'd' });
  const six = client.command('stock', 6, { k: 'find', id: 'e' });
  await waitFor(() => seen.length === 2, { deadlineMs: 5000, what: 'the bundle and the command to stock.6' });
  const carried = seen.find((s) => s.subject === n.cmd('stock', 3));
  t.ok(carried, 'the bundle travels on the first command\'s partition');
  t.same(carried!.envelopes.map((e) => e.p), [undefined, 5], 'the command for stock.5 names its partition');
  t.same(seen.find((s) => s.subject === n.cmd('stock', 6))?.envelopes.length, 1, 'stock.6 (held, not serving): its own message');

  // The worker no longer runs stock.5: it says so, and a copy of that answer comes too.
  answer(carried!.envelopes[0]!, ok('three'));
  answer(carried!.envelopes[1]!, fail('elsewhere', 'stock.5 is not served by this worker now'));
  answer(carried!.envelopes[1]!, fail('elsewhere', 'a copy'));
  answer(seen.find((s) => s.subject === n.cmd('stock', 6))!.envelopes[0]!, ok('six'));
  await waitFor(() => seen.some((s) => s.subject === n.cmd('stock', 5)), { deadlineMs: 5000, what: 'the command sent again to stock.5' });
  const own = seen.filter((s) => s.subject === n.cmd('stock', 5));
  t.same(own[0]!.envelopes.map((e) => [e.p, e.r]), [[undefined, carried!.envelopes[1]!.r]], 'to its own subject, no partition named, the same reply subject');
  answer(own[0]!.envelopes[0]!, ok('five'));
  t.same(await Promise.all([three, five, six]), [ok('three'), ok('five'), ok('six')], 'each gets its own outcome; elsewhere is never one');
  await nc.flush();
  t.equal(seen.filter((s) => s.subject === n.cmd('stock', 5)).length, 1, 'sent again once, whatever the copies of elsewhere');

  // The claim that failed is forgotten: the next command to stock.5 goes on its own, stock.3 still carries its own.
  seen.length = 0;
  const again = [client.command('stock', 3, { k: 'find', id: 'f' }), client.command('stock', 5, { k: 'find', id: 'g' })];
  await waitFor(() => seen.length === 2, { deadlineMs: 5000, what: 'two messages' });
  t.same(seen.map((s) => [s.subject, s.envelopes.length, s.envelopes[0]!.p]).sort(), [[n.cmd('stock', 3), 1, undefined], [n.cmd('stock', 5), 1, undefined]]);
  for (const s of seen) answer(s.envelopes[0]!, ok('x'));
  await Promise.all(again);
});
