/**
 * A command carried in another partition's bundle to a worker that does not run its partition (the gateway's view
 * of the owners was wrong: a partition moved since the last pulse), against real worker processes with dynamic
 * placement: the worker changes nothing and answers elsewhere, the gateway sends the command to its partition, and
 * it is applied there once. The wrong view is made on purpose: a pulse in the name of one worker claiming a
 * partition the other runs, at an epoch newer than the real one, heard by the gateway's client just before it sends.
 */
import t from 'tap';
import { createLog } from '../../src/log.js';
import { partitionOf } from '../../src/partitioning.js';
import { names, type CommandEnvelope } from '../../src/protocol.js';
import { decode } from '../../src/codec.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import type { Heartbeat } from '../../src/heartbeat.js';
import { startCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/servers.js';

const ATTEMPTS = 5;

t.test('a command carried to a worker that does not run its partition is applied once, on its partition, by the worker that does', async (t) => {
  const c = await startCluster(t, { workerProcesses: 2, partitions: 8 });
  for (const i of [0, 1]) c.spawnWorker(i);
  await c.waitSettled('two workers to share the partitions');
  const n = names(c.config.streamPrefix);
  // Settled may come before the controller has balanced: wait until each worker runs a stock partition.
  const stockOf = (hb: Heartbeat) => hb.held.filter((h) => h.k === 'stock' && h.t === undefined).map((h) => h.p);
  let a: Heartbeat | undefined;
  let b: Heartbeat | undefined;
  await waitFor(
    async () => {
      [a, b] = [...(await c.status()).workers.values()].map((w) => w.heartbeat);
      return a !== undefined && b !== undefined && stockOf(a).length > 0 && stockOf(b).length > 0;
    },
    { deadlineMs: 30_000, what: 'each of the two workers to run a stock partition' },
  );
  const [p, q] = [stockOf(a!)[0]!, stockOf(b!)[0]!];
  t.pass(`stock.${p} runs on ${a!.id}, stock.${q} on ${b!.id}`);

  // An item on each of the two partitions (ids are uuids: one in 8 lands on a given partition).
  const itemOn = async (partition: number): Promise<string> => {
    for (let tries = 0; tries < 500; tries++) {
      const id = (await c.call('POST', '/stock/item/create/1')).body.item_id as string;
      if (partitionOf(id, c.config.partitions) === partition) return id;
    }
    throw new Error(`no item created on stock.${partition} in 500 tries`);
  };
  const [onP, onQ] = [await itemOn(p), await itemOn(q)];

  const client = createShopClient({ nc: c.nc, config: c.config, log: createLog('test', 'error') });
  t.teardown(() => client.close());
  const seen: { subject: string; envelopes: CommandEnvelope[] }[] = [];
  const sub = c.nc.subscribe(`${n.cmd('stock', 0).replace(/\.0$/, '')}.*`, {
    callback: (_err, m) => {
      const body = decode(m.data) as CommandEnvelope | CommandEnvelope[];
      seen.push({ subject: m.subject, envelopes: Array.isArray(body) ? body : [body] });
    },
  });
  t.teardown(() => sub.unsubscribe());

  let carried = 0;
  for (let attempt = 1; attempt <= ATTEMPTS && carried === 0; attempt++) {
    // a's held partitions and stock.q, at an epoch newer than b's: the gateway takes a for q's owner.
    const lie = { ...a!, seq: 0, at: Date.now(), held: [...a!.held, { k: 'stock' as const, p: q, e: 1_000_000_000, lag: 0 }] };
    c.nc.publish(n.pulse(a!.id), new TextEncoder().encode(JSON.stringify(lie)));
    await c.nc.flush(); // the client shares this connection: its subscription has the pulse now
    seen.length = 0;
    // In one turn: the command for stock.p first (the carrier), then the one for stock.q.
    const answers = await Promise.all([client.command('stock', p, { k: 'add', id: onP, amount: 1 }), client.command('stock', q, { k: 'add', id: onQ, amount: 1 })]);
    t.same(answers.map((r) => r.ok), [true, true], `attempt ${attempt}: both applied`);
    const onCarrier = seen.find((s) => s.subject === n.cmd('stock', p) && s.envelopes.some((e) => e.p === q));
    if (onCarrier) {
      carried = attempt;
      t.ok(seen.some((s) => s.subject === n.cmd('stock', q)), 'the command for stock.q was then sent to its own subject');
    }
    // (Else a's real pulse came between the lie and the commands: the gateway knew the truth. Try again.)
  }
  t.ok(carried > 0, `a command was carried to the wrong worker (attempt ${carried} of at most ${ATTEMPTS})`);
  const stock = async (id: string) => (await c.call('GET', `/stock/find/${id}`)).body.stock as number;
  t.equal(await stock(onQ), carried, 'each add to the item on stock.q applied once (none twice, none lost)');
  t.equal(await stock(onP), carried, 'and each add to the item on stock.p');
});
