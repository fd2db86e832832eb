/**
 * Fault tests (test/helpers/faults.ts) of the shop's own processes on the production topology, under a checkout storm
 * with stock and credit top-ups: a busy machine (no worker may lose its lease), SIGKILL and SIGSTOP of a gateway, SIGKILL
 * and SIGSTOP of a worker. Each is lifted as
 * the supervisor would (a dead process started again at once; a paused one resumed), and the next begins once the
 * shop is whole again. Nothing may be lost or invented, and every answer must hold; the unavailability of each fault
 * is measured and printed.
 */
import { spawn } from 'node:child_process';
import { setTimeout as delay } from 'node:timers/promises';
import t from 'tap';
import { partitionsOf, runFaults, touches, workerId, type Fault } from '../helpers/faults.js';
import { waitFor } from '../helpers/servers.js';

/** How long a paused gateway stays paused: the length of this fault is its subject (a client waits that long). */
const GATEWAY_PAUSE_MS = 3000;
/** How long the machine is kept busy beside the stack: several leases (2 s on this profile). */
const BUSY_MS = 10_000;
/** Busy loops beside the stack: one per core of the 2-core machine this runs on. */
const BUSY_LOOPS = 2;

const faults: Fault[] = [
  {
    // Not a fault of the shop's: its processes share the cores with others. The short lease must hold (no worker exits,
    // asserted below), and the storm goes on, slower.
    name: `a busy machine (${BUSY_LOOPS} busy loops beside the stack for ${BUSY_MS / 1000} s)`,
    async run() {
      const loops = Array.from({ length: BUSY_LOOPS }, () => spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' }));
      const at = performance.now();
      try {
        await delay(BUSY_MS); // the fault's length is its subject
      } finally {
        for (const l of loops) l.kill('SIGKILL');
      }
      return { at, liftedAt: performance.now(), notes: [`${BUSY_LOOPS} busy loops for ${BUSY_MS} ms`] };
    },
  },
  {
    name: 'gateway SIGKILL',
    async run(shop) {
      const g = shop.gateways[1]!;
      const at = performance.now();
      const restarted = g.replaced();
      g.signal('SIGKILL');
      await restarted; // started again at once, as the supervisor does
      const liftedAt = performance.now();
      await waitFor(async () => (await fetch(`${shop.gatewayUrls[1]}/stock/find/none`)).status === 400, { deadlineMs: 30_000, what: 'the restarted gateway to answer' });
      return { at, liftedAt, affected: (r) => r.gateway === 1, notes: [`restarted gateway answering ${Math.round(performance.now() - at)} ms after the kill`] };
    },
  },
  {
    name: `gateway SIGSTOP (${GATEWAY_PAUSE_MS} ms)`,
    async run(shop) {
      const g = shop.gateways[1]!;
      const at = performance.now();
      g.signal('SIGSTOP');
      // The pause's length is what this fault is: a client of the paused gateway waits that long.
      await new Promise((resolve) => setTimeout(resolve, GATEWAY_PAUSE_MS));
      g.signal('SIGCONT');
      return { at, liftedAt: performance.now(), affected: (r) => r.gateway === 1 };
    },
  },
  {
    name: 'worker SIGKILL (the controller leader)',
    async run(shop) {
      const before = await shop.status();
      // The worst case: the worker whose controller leads (its partitions and the placement decisions both wait).
      const w = shop.workers.find((p) => workerId(before, p.pid) === before.leader)!;
      const id = workerId(before, w.pid)!;
      const held = partitionsOf(before, w.pid);
      const at = performance.now();
      const restarted = w.replaced();
      w.signal('SIGKILL');
      await restarted; // started again at once, as the supervisor does
      const liftedAt = performance.now();
      await shop.settled('every partition running again after the kill', { without: id });
      return {
        at,
        liftedAt,
        affected: (r, orders) => touches(r, orders, shop.config.partitions).some((k) => held.has(k)),
        notes: [`the killed worker held ${held.size} partitions; all running again (on the others or its successor) ${Math.round(performance.now() - at)} ms after the kill`],
      };
    },
  },
  {
    name: 'worker SIGSTOP (until its partitions run elsewhere)',
    async run(shop) {
      const before = await shop.status();
      const w = shop.workers.find((p) => workerId(before, p.pid) !== before.leader)!;
      const held = partitionsOf(before, w.pid);
      const id = workerId(before, w.pid)!;
      const at = performance.now();
      w.signal('SIGSTOP');
      await waitFor(
        async () => {
          const s = await shop.status();
          return s.moving.size === 0 && !s.status.partitions.some((p) => p.owner === id);
        },
        { deadlineMs: 60_000, intervalMs: 200, what: 'the paused worker’s partitions to run elsewhere' },
      );
      const movedMs = performance.now() - at;
      // Resumed, it finds its lease lost and exits; the supervisor starts a fresh one.
      w.expectExit();
      const replaced = w.replaced();
      w.signal('SIGCONT');
      await replaced;
      return {
        at,
        liftedAt: performance.now(),
        affected: (r, orders) => touches(r, orders, shop.config.partitions).some((k) => held.has(k)),
        notes: [`the paused worker held ${held.size} partitions; they ran elsewhere ${Math.round(movedMs)} ms after the pause (lease ${shop.config.workerLeaseMs} ms)`],
      };
    },
  },
];

t.test('faults of workers and gateways under a checkout storm with top-ups: nothing lost or invented, every answer holds', async (t) => {
  const { reports, shop } = await runFaults(t, faults);
  for (const p of [...shop.workers, ...shop.gateways]) t.same(p.unexpectedExits, [], `${p.role} ${p.index} exited only when made to`);
  const gatewayKill = reports.find((r) => r.name === 'gateway SIGKILL')!;
  t.equal(gatewayKill.others!.failed, 0, 'a gateway killed: requests to the other gateway all answered');
});
