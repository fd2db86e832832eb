/**
 * Fault tests (test/helpers/faults.ts) of Redis on the production topology (a primary, two replicas of which one must
 * have every commit, three Sentinels), under a checkout storm with stock and credit top-ups: SIGKILL and SIGSTOP of
 * the primary, each held past the Sentinels' down-after until they have promoted a replica, and SIGKILL of a replica.
 * The killed primary is then started again (as a replica of the new one, as the supervisor does); the paused one
 * resumed, and the Sentinels make it a replica; the killed replica started again after REPLICA_DOWN_MS. Nothing may be
 * lost or invented, and every answer must hold.
 */
import t from 'tap';
import { SENTINEL_FAILOVER_TIMEOUT_MS } from '../../src/stack/topology.js';
import { runFaults, type Fault } from '../helpers/faults.js';
import { waitFor } from '../helpers/servers.js';

/** When the Sentinels last promoted a replica (performance.now()). */
let promotedAt = -Infinity;

/**
 * Sentinels fail the same primary over again only twice their failover timeout after the last failover of it: a
 * second fault sooner would measure that wait (10–20 s), not the failover. Each fault here is one primary loss.
 */
const readyForAnotherFailover = () =>
  waitFor(() => performance.now() - promotedAt >= 2 * SENTINEL_FAILOVER_TIMEOUT_MS, { deadlineMs: 3 * SENTINEL_FAILOVER_TIMEOUT_MS, intervalMs: 100, what: 'the Sentinels to be ready for another failover' });

/**
 * The primary lost until the Sentinels have promoted the replica, then back: killed and restarted (as a replica of
 * the promoted one, as the supervisor starts it), or paused and resumed (the Sentinels make it a replica).
 */
const primaryLost = (how: 'SIGKILL' | 'SIGSTOP'): Fault => ({
  name: `Redis primary ${how} (failover)`,
  async run(shop) {
    await readyForAnotherFailover();
    const primary = await shop.redis.primary();
    const at = performance.now();
    if (how === 'SIGKILL') primary.kill9();
    else primary.pause();
    const promoted = await shop.redis.waitPrimary(primary, { replicas: 0 });
    promotedAt = performance.now();
    if (how === 'SIGKILL') await primary.restart();
    else primary.resume();
    // Lifted: commits need only the other replica from here on. The old primary rejoins as a replica in its own time
    // (a resumed one when the Sentinels convert it, seconds later): noted when it does, and waited for (shop.whole)
    // before the next fault, but not part of this one's recovery.
    const liftedAt = performance.now();
    const notes = [`${promoted.url} promoted ${Math.round(promotedAt - at)} ms after the ${how}; the old primary back (${how === 'SIGKILL' ? 'restarted' : 'resumed'}) ${Math.round(liftedAt - at)} ms after`];
    shop.redis.waitPrimary(primary).then(
      () => notes.push(`the old primary a replica again ${Math.round(performance.now() - at)} ms after the ${how}`),
      (err: Error) => notes.push(`the old primary not a replica again: ${err.message}`),
    );
    return { at, liftedAt, notes };
  },
});

/** How long a killed replica stays down: longer than a commit waits for a replica (redisWaitTimeoutMs). */
const REPLICA_DOWN_MS = 5000;

/** A replica killed and started again after REPLICA_DOWN_MS: commits go on with WAIT counting the other replica. */
const replicaLost: Fault = {
  name: 'Redis replica SIGKILL (restarted after 5 s)',
  async run(shop) {
    const primary = await shop.redis.primary();
    const replica = shop.redis.nodes.find((n) => n !== primary)!;
    const at = performance.now();
    replica.kill9();
    await new Promise((resolve) => setTimeout(resolve, REPLICA_DOWN_MS)); // the fault lasts this long: nothing to wait for
    await replica.restart();
    const liftedAt = performance.now();
    await shop.redis.waitPrimary(replica);
    return { at, liftedAt, notes: [`${replica.url} killed, restarted ${Math.round(liftedAt - at)} ms after, online again ${Math.round(performance.now() - at)} ms after`] };
  },
};

const faults: Fault[] = [primaryLost('SIGKILL'), primaryLost('SIGSTOP'), replicaLost];

t.test('Redis primary faults under a checkout storm with top-ups: nothing lost or invented, every answer holds', async (t) => {
  const { shop } = await runFaults(t, faults);
  for (const p of [...shop.workers, ...shop.gateways]) t.same(p.unexpectedExits, [], `${p.role} ${p.index} never exited`);
});
