/**
 * Fault tests (test/helpers/faults.ts) of the NATS cluster on the production topology, under a checkout storm with
 * stock and credit top-ups: SIGKILL and SIGSTOP of the node leading the ORDER stream (which every checkout goes
 * through), and that node cut off from the others and from every client (its own network namespace, its link taken
 * down; where the test cannot make namespaces, paused instead, and it says so). Each node is held down until the
 * storm is healthy without it, then brought back (restarted, resumed, its link up) and caught up before the next
 * fault. Nothing may be lost or invented, every answer must hold, and no worker may lose its lease.
 */
import t from 'tap';
import { setTimeout as delay } from 'node:timers/promises';
import type { Kind } from '../../src/config.js';
import { names } from '../../src/protocol.js';
import { runFaults, type Fault, type FaultShop } from '../helpers/faults.js';

/** The node that leads the ORDER stream now. */
async function orderLeader(shop: FaultShop): Promise<number> {
  const leader = await shop.nats.leaderOf(names(shop.config.streamPrefix).stream('order'));
  if (leader === undefined) throw new Error('the ORDER stream has no leader');
  return leader;
}

/**
 * Resolves with the ms from `at` until the ORDER stream has a leader other than node `victim`: the JetStream
 * election's own gap, measured beside the storm's, so that the cost above it is seen.
 */
async function electedAfter(shop: FaultShop, victim: number, at: number, kind: Kind = 'order'): Promise<number> {
  const stream = names(shop.config.streamPrefix).stream(kind);
  const deadline = performance.now() + 60_000;
  while (performance.now() < deadline) {
    const leader = await shop.nats.leaderOf(stream);
    if (leader !== undefined && leader !== victim) return Math.round(performance.now() - at);
    await delay(100);
  }
  return NaN;
}

/**
 * The elections a node's loss starts, in ms after `at`: the ORDER stream's, the meta leader's (when it led), and when
 * the STOCK and PAYMENT streams had a leader off the lost node (at once when theirs was elsewhere).
 */
async function elections(shop: FaultShop, victim: number, at: number, ledMeta: boolean): Promise<string> {
  const [stream, meta, stock, payment] = await Promise.all([
    electedAfter(shop, victim, at),
    ledMeta ? metaElectedAfter(shop, victim, at) : Promise.resolve(undefined),
    electedAfter(shop, victim, at, 'stock'),
    electedAfter(shop, victim, at, 'payment'),
  ]);
  const metaNote = meta === undefined ? ' (the meta leader was elsewhere)' : `, JetStream meta leader ${meta} ms after it`;
  return `ORDER stream leader elected ${stream} ms after it${metaNote}; STOCK led off n${victim} ${stock} ms, PAYMENT ${payment} ms after it`;
}

async function metaElectedAfter(shop: FaultShop, victim: number, at: number): Promise<number> {
  const deadline = performance.now() + 60_000;
  while (performance.now() < deadline) {
    const leader = await shop.nats.metaLeader();
    if (leader !== undefined && leader !== victim) return Math.round(performance.now() - at);
    await delay(100);
  }
  return NaN;
}

const faults: Fault[] = [
  {
    name: 'NATS node SIGKILL (the ORDER stream leader)',
    async run(shop, storm) {
      const i = await orderLeader(shop);
      const ledMeta = (await shop.nats.metaLeader()) === i;
      const at = performance.now();
      shop.nats.nodes[i]!.kill9();
      const [healthyAt, elected] = await Promise.all([storm.healthy(at, `without node n${i}`), elections(shop, i, at, ledMeta)]);
      await shop.nats.nodes[i]!.restart(); // as the supervisor would (it does so at once; here after the shop healed without it)
      return { at, liftedAt: performance.now(), notes: [`n${i} down ${Math.round(performance.now() - at)} ms; ${elected}; healthy without it ${Math.round(healthyAt - at)} ms after the kill`] };
    },
  },
  {
    name: 'NATS node SIGSTOP (the ORDER stream leader)',
    async run(shop, storm) {
      const i = await orderLeader(shop);
      const ledMeta = (await shop.nats.metaLeader()) === i;
      const at = performance.now();
      shop.nats.nodes[i]!.pause();
      const [healthyAt, elected] = await Promise.all([storm.healthy(at, `with node n${i} paused`), elections(shop, i, at, ledMeta)]);
      shop.nats.nodes[i]!.resume();
      return { at, liftedAt: performance.now(), notes: [`n${i} paused ${Math.round(performance.now() - at)} ms; ${elected}; healthy without it ${Math.round(healthyAt - at)} ms after the pause`] };
    },
  },
  {
    name: 'NATS node cut off (the ORDER stream leader)',
    async run(shop, storm) {
      const i = await orderLeader(shop);
      const ledMeta = (await shop.nats.metaLeader()) === i;
      const at = performance.now();
      const how = shop.lab ? 'link down' : 'paused: no network namespaces here';
      if (shop.lab) await shop.lab.cut(i);
      else shop.nats.nodes[i]!.pause();
      const [healthyAt, elected] = await Promise.all([storm.healthy(at, `with node n${i} cut off`), elections(shop, i, at, ledMeta)]);
      if (shop.lab) await shop.lab.heal(i);
      else shop.nats.nodes[i]!.resume();
      return { at, liftedAt: performance.now(), notes: [`n${i} cut off (${how}) ${Math.round(performance.now() - at)} ms; ${elected}; healthy without it ${Math.round(healthyAt - at)} ms after the cut`] };
    },
  },
];

t.test('NATS node faults under a checkout storm with top-ups: nothing lost or invented, every answer holds', async (t) => {
  const { shop } = await runFaults(t, faults, { netns: true });
  for (const p of shop.gateways) t.same(p.unexpectedExits, [], `gateway ${p.index} never exited`);
});
