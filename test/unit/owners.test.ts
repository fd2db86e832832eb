/**
 * A gateway's view of who runs which partition, from the workers' pulses (src/transport/owners.ts): the pure part.
 */
import t from 'tap';
import type { Heartbeat } from '../../src/heartbeat.js';
import { OwnerClaims } from '../../src/transport/owners.js';

const LEASE = 2000;
const pulse = (id: string, held: Heartbeat['held'], draining = false): Heartbeat => ({ id, pid: 1, host: 'h', kinds: ['stock'], adminPort: 0, draining, carries: true, held, stale: {} });
const runs = (p: number, e: number) => ({ k: 'stock' as const, p, e, lag: 0 });

t.test('a worker\'s pulse claims the partitions it serves; claims last while its pulses are younger than the lease', async (t) => {
  const claims = new OwnerClaims(LEASE);
  claims.heard(pulse('a', [runs(1, 3), runs(2, 1), { ...runs(3, 1), t: 'restarting', n: 2 }]), 1000);
  t.equal(claims.of('stock', 1, 1000), 'a');
  t.equal(claims.of('stock', 2, 2999), 'a', 'within the lease');
  t.equal(claims.of('stock', 2, 3000), undefined, 'not once its last pulse is a lease old');
  t.equal(claims.of('stock', 3, 1000), undefined, 'a partition held but restarting is claimed by nobody');
  t.equal(claims.of('payment', 1, 1000), undefined, 'claims are per kind');
  claims.heard(pulse('a', [runs(1, 3)]), 1500);
  t.equal(claims.of('stock', 2, 1500), undefined, 'a pulse that no longer lists a partition drops its claim');
  claims.heard(pulse('a', [runs(1, 3)], true), 1600);
  t.equal(claims.of('stock', 1, 1600), undefined, 'a draining worker claims nothing');
  claims.heard({ ...pulse('old', [runs(5, 1)]), carries: undefined }, 1700);
  t.equal(claims.of('stock', 5, 1700), undefined, 'nor a worker that does not say it applies carried commands where they belong (an older version)');
});

t.test('the newer epoch wins, whichever pulse comes last; a forgotten claim is forgotten for its worker only', async (t) => {
  const claims = new OwnerClaims(LEASE);
  claims.heard(pulse('b', [runs(1, 5)]), 1000);
  claims.heard(pulse('a', [runs(1, 4)]), 1001); // a's pulse from before the move, late
  t.equal(claims.of('stock', 1, 1001), 'b', 'an older epoch does not replace a newer claim');
  claims.heard(pulse('a', [runs(1, 6)]), 1002);
  t.equal(claims.of('stock', 1, 1002), 'a', 'a newer one does');
  claims.heard(pulse('b', []), 1003);
  t.equal(claims.of('stock', 1, 1003), 'a', 'b letting go does not drop a\'s claim');
  claims.forget('stock', 1, 'b');
  t.equal(claims.of('stock', 1, 1003), 'a', 'nor does forgetting b\'s');
  claims.forget('stock', 1, 'a');
  t.equal(claims.of('stock', 1, 1003), undefined, 'forgetting a\'s does');
  claims.heard(pulse('a', [runs(1, 6)]), 1004);
  t.equal(claims.of('stock', 1, 1004), 'a', 'until its next pulse claims it again');
});
