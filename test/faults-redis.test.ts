/**
 * Fault tests (test/helpers/faults.ts) of Redis on the production topology (a primary, one replica that must have
 * every commit, three Sentinels), under a checkout storm with stock and credit top-ups: SIGKILL and SIGSTOP of the
 * primary, each held past the Sentinels' down-after until they have promoted the replica. The killed primary is then
 * started again (as a replica of the new one, as the supervisor does); the paused one resumed, and the Sentinels make
 * it a replica. Nothing may be lost or invented, and every answer must hold.
 */
import t from 'tap';
import { SENTINEL_FAILOVER_TIMEOUT_MS } from '../src/stack/topology.js';
import { runFaults, type Fault } from './helpers/faults.js';
import { waitFor } from './helpers/servers.js';

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
    await shop.redis.waitPrimary(primary, { replicas: 1 });
    return { at, liftedAt: performance.now(), notes: [`${promoted.url} promoted ${Math.round(promotedAt - at)} ms after the ${how}; the old primary its replica ${Math.round(performance.now() - at)} ms after`] };
  },
});

const faults: Fault[] = [primaryLost('SIGKILL'), primaryLost('SIGSTOP')];

t.test('Redis primary faults under a checkout storm with top-ups: nothing lost or invented, every answer holds', async (t) => {
  const { shop } = await runFaults(t, faults);
  for (const p of [...shop.workers, ...shop.gateways]) t.same(p.unexpectedExits, [], `${p.role} ${p.index} never exited`);
});
