/**
 * The control plane's decisions as pure functions, with time from a fake clock: leader election, liveness and the
 * silence rule, a worker's lease and lifecycle, the handoff of one partition, the controller's placement writes and
 * the supervisor's restart backoff. No servers, no waiting.
 */
import t from 'tap';
import { electionStep, leads, newElection, type Election, type ElectionAction, type ElectionEvent } from '../../src/placement/election.js';
import { draining, newWorker, serving, hostedStep, workerStep, type HostedView, type WorkerAction, type WorkerEvent, type WorkerState } from '../../src/placement/handoff.js';
import { hear, isAlive, leaseAt, leaseStored, liveMembers, newLease, newLiveness, ranLate, type Liveness } from '../../src/placement/liveness.js';
import { decidePlacement, type Placed, type PlacementView } from '../../src/placement/moves.js';
import type { Heartbeat } from '../../src/placement/placement.js';
import { childStep, newChild, type ChildAction, type ChildEvent, type ChildState, type RestartPolicy } from '../../src/stack/restart.js';
import { FakeClock } from '../helpers/clock.js';

const LEASE_MS = 1500;
const INTERVAL_MS = 250;
const limits = { leaseMs: LEASE_MS, intervalMs: INTERVAL_MS };

const hb = (id: string, more: Partial<Heartbeat> = {}): Heartbeat => ({ id, pid: 1, host: 'h', kinds: ['stock'], adminPort: 0, draining: false, held: [], stale: {}, ...more });

// ---- leader election ----------------------------------------------------------------------------------

/** A candidate driven through events, with the writes it asks for answered by the test. */
function candidate(self: string) {
  let state: Election = newElection(self);
  const on = (event: ElectionEvent): ElectionAction[] => {
    const step = electionStep(state, event, limits);
    state = step.state;
    return step.actions;
  };
  return {
    on,
    get state() {
      return state;
    },
    /** A tick whose write (if any) the bucket accepts at revision `rev`. */
    tickAccepted(now: number, rev: number): ElectionAction[] {
      const actions = on({ kind: 'tick', now });
      const write = actions.find((a) => a.do === 'write');
      return write && write.do === 'write' ? [write, ...on({ kind: 'written', claim: write.claim, rev })] : actions;
    },
  };
}

t.test('election: a lone candidate creates the key, leads, and renews on its own revision', async (t) => {
  const clock = new FakeClock();
  const c = candidate('a');
  const [write, log] = c.tickAccepted(clock.now(), 7);
  t.same(write, { do: 'write', claim: { op: 'create', at: clock.now() } }, 'no leader seen: create');
  t.match(log, { do: 'log', msg: 'leading (no leader before)' });
  t.ok(leads(c.state, clock.now(), limits));
  clock.advance(INTERVAL_MS);
  t.same(c.on({ kind: 'tick', now: clock.now() }), [{ do: 'write', claim: { op: 'renew', rev: 7, at: clock.now() } }], 'the leader renews on its own revision');
});

t.test('election: a leader acts only while its last renewal is younger than lease − interval', async (t) => {
  const clock = new FakeClock();
  const c = candidate('a');
  c.tickAccepted(clock.now(), 1);
  clock.advance(LEASE_MS - INTERVAL_MS - 1);
  t.ok(leads(c.state, clock.now(), limits), 'just inside');
  clock.advance(1);
  t.notOk(leads(c.state, clock.now(), limits), 'renewals stuck (none written back): it stops acting before another may take over');
  c.tickAccepted(clock.now(), 2);
  t.ok(leads(c.state, clock.now(), limits), 'a renewal that is stored restores it');
});

t.test('election: leadership is lost on a failed renew', async (t) => {
  const clock = new FakeClock();
  const c = candidate('a');
  c.tickAccepted(clock.now(), 1);
  clock.advance(INTERVAL_MS);
  const [write] = c.on({ kind: 'tick', now: clock.now() });
  t.match(write, { do: 'write', claim: { op: 'renew', rev: 1 } });
  const actions = c.on({ kind: 'refused', claim: (write as Extract<ElectionAction, { do: 'write' }>).claim, err: new Error('wrong last sequence') });
  t.match(actions, [{ do: 'log', level: 'warn', msg: 'lost the leadership: could not renew it' }]);
  t.equal(c.state.role.phase, 'follower');
  t.notOk(leads(c.state, clock.now(), limits));
  t.same(c.on({ kind: 'refused', claim: { op: 'create', at: clock.now() }, err: new Error('exists') }), [], 'a follower whose campaign fails says nothing');
});

t.test('election: another leader is taken over only after its revision stood unchanged for a lease', async (t) => {
  const clock = new FakeClock();
  const c = candidate('b');
  c.on({ kind: 'observed', key: { id: 'a', rev: 4 }, now: clock.now() });
  clock.advance(LEASE_MS);
  t.same(c.on({ kind: 'tick', now: clock.now() }), [], 'a lease exactly: still the leader’s');
  clock.advance(1);
  t.same(c.on({ kind: 'tick', now: clock.now() }), [{ do: 'write', claim: { op: 'takeover', rev: 4, after: 'a', at: clock.now() } }], 'silent past a lease: CAS on the revision seen');

  const d = candidate('d');
  d.on({ kind: 'observed', key: { id: 'a', rev: 4 }, now: clock.now() });
  clock.advance(LEASE_MS - 100);
  d.on({ kind: 'observed', key: { id: 'a', rev: 5 }, now: clock.now() });
  clock.advance(200);
  t.same(d.on({ kind: 'tick', now: clock.now() }), [], 'a renewal seen restarts the wait');
  d.on({ kind: 'observed', key: { id: 'a', rev: 5 }, now: clock.now() });
  clock.advance(LEASE_MS - 199);
  t.match(d.on({ kind: 'tick', now: clock.now() }), [{ do: 'write', claim: { op: 'takeover', rev: 5 } }], 'the same revision again does not');
  t.match(d.on({ kind: 'written', claim: { op: 'takeover', rev: 5, after: 'a', at: clock.now() }, rev: 6 }), [{ do: 'log', msg: 'leading', fields: { after: 'a' } }]);
  t.equal(d.state.role.phase, 'leader');
});

t.test('election: a leader whose process was found gone (its probe answered by nobody) is taken over at once, not after a lease', async (t) => {
  const clock = new FakeClock();
  const c = candidate('b');
  c.on({ kind: 'observed', key: { id: 'a', rev: 4 }, now: clock.now() });
  clock.advance(LEASE_MS / 2);
  t.same(c.on({ kind: 'tick', now: clock.now() }), [], 'within its lease: still the leader’s');
  t.same(c.on({ kind: 'tick', now: clock.now(), gone: true }), [{ do: 'write', claim: { op: 'takeover', rev: 4, after: 'a', at: clock.now() } }], 'gone: CAS on the revision seen');
});

t.test('election: its own key from before a restart is taken at once; an invalid leader value is a silent leader', async (t) => {
  const clock = new FakeClock();
  const c = candidate('a');
  c.on({ kind: 'observed', key: { id: 'a', rev: 9 }, now: clock.now() });
  t.match(c.on({ kind: 'tick', now: clock.now() }), [{ do: 'write', claim: { op: 'takeover', rev: 9, after: 'a' } }]);
  const d = candidate('d');
  d.on({ kind: 'observed', key: { id: '', rev: 3 }, now: clock.now() });
  t.same(d.on({ kind: 'tick', now: clock.now() }), [], 'not before a lease');
  clock.advance(LEASE_MS + 1);
  t.match(d.on({ kind: 'tick', now: clock.now() }), [{ do: 'write', claim: { op: 'takeover', rev: 3, after: '' } }]);
});

t.test('election: a leader that sees another in the key follows; closing, a leader resigns at its revision', async (t) => {
  const clock = new FakeClock();
  const c = candidate('a');
  c.tickAccepted(clock.now(), 1);
  t.same(c.on({ kind: 'observed', key: { id: 'a', rev: 1 }, now: clock.now() }), [], 'its own write, echoed by the watch');
  t.match(c.on({ kind: 'observed', key: { id: 'b', rev: 2 }, now: clock.now() }), [{ do: 'log', msg: 'no longer leading', fields: { leader: 'b' } }]);
  t.equal(c.state.role.phase, 'follower');
  t.same(c.on({ kind: 'written', claim: { op: 'renew', rev: 1, at: clock.now() }, rev: 3 }), [], 'a renewal that lands after that changes nothing');
  t.equal(c.state.role.phase, 'follower');
  t.same(c.on({ kind: 'close' }), [], 'a follower has nothing to hand over');

  const d = candidate('d');
  d.tickAccepted(clock.now(), 5);
  d.tickAccepted(clock.now() + INTERVAL_MS, 6);
  t.same(d.on({ kind: 'close' }), [{ do: 'resign', rev: 6 }], 'deletes the key only if it is still its own write');
  t.equal(d.state.role.phase, 'follower');
  t.same(d.on({ kind: 'observed', key: undefined, now: clock.now() }), []);
  t.match(d.on({ kind: 'tick', now: clock.now() }), [{ do: 'write', claim: { op: 'create' } }], 'a deleted key is created again');
});

// ---- liveness and the silence rule --------------------------------------------------------------------

const heard = (view: Liveness, id: string, now: number, initial = false, storedAt = now) => hear(view, { kind: 'heartbeat', hb: hb(id), now, initial, storedAt }, LEASE_MS);

t.test('liveness: a worker is alive for a lease after its last heartbeat arrived, dead after', async (t) => {
  const clock = new FakeClock();
  let view = newLiveness(clock.now());
  view = heard(view, 'a', clock.now());
  clock.advance(LEASE_MS);
  t.ok(isAlive(view, 'a', clock.now(), LEASE_MS), 'a lease exactly');
  clock.advance(1);
  t.notOk(isAlive(view, 'a', clock.now(), LEASE_MS), 'past it');
  t.notOk(isAlive(view, 'nobody', clock.now(), LEASE_MS));
  view = hear(view, { kind: 'gone', id: 'a' }, LEASE_MS);
  t.equal(view.members.size, 0, 'a deleted key is no member');
  t.equal(hear(view, { kind: 'gone', id: 'a' }, LEASE_MS), view, 'deleting what is not there changes nothing');
});

t.test('liveness: a heartbeat heard again on its other path, or late, changes nothing; unnumbered ones always count', async (t) => {
  const clock = new FakeClock();
  const beat = (seq: number | undefined, held: Heartbeat['held']) => ({ kind: 'heartbeat' as const, hb: hb('a', { ...(seq === undefined ? {} : { seq }), held }), now: clock.now(), initial: false, storedAt: clock.now() });
  let view = hear(newLiveness(clock.now()), beat(1, [{ k: 'stock', p: 0, e: 1, lag: 0 }]), LEASE_MS);
  clock.advance(100);
  view = hear(view, beat(2, []), LEASE_MS); // the pulse: it let go of stock.0
  const after = view;
  clock.advance(100);
  t.equal(hear(view, beat(2, []), LEASE_MS), after, 'the same heartbeat from the bucket: nothing new');
  t.equal(hear(view, beat(1, [{ k: 'stock', p: 0, e: 1, lag: 0 }]), LEASE_MS), after, 'an older one, late: it does not say the partition is held again');
  view = hear(view, beat(3, []), LEASE_MS);
  t.equal(view.members.get('a')!.seenAt, clock.now(), 'a newer one restarts its clock');
  view = hear(view, beat(undefined, []), LEASE_MS);
  t.equal(view.members.get('a')!.hb.seq, undefined, 'a heartbeat without a number (an older worker) counts');
});

t.test('liveness: a value found when the watch began counts from when NATS stored it', async (t) => {
  const clock = new FakeClock();
  let view = newLiveness(clock.now());
  view = heard(view, 'old', clock.now(), true, clock.now() - LEASE_MS - 1);
  view = heard(view, 'fresh', clock.now(), true, clock.now() - 10);
  view = heard(view, 'skewed', clock.now(), true, clock.now() + 60_000);
  t.same(liveMembers(view, clock.now(), LEASE_MS).map((m) => m.hb.id).sort(), ['fresh', 'skewed'], 'stored more than a lease ago: dead at once; a clock ahead counts as now');
});

t.test('liveness: the silence rule forgives everyone when nobody was heard from for half a lease', async (t) => {
  const clock = new FakeClock();
  let view = newLiveness(clock.now());
  view = heard(view, 'a', clock.now());
  view = heard(view, 'b', clock.now());
  // Everyone puts one each interval; a heartbeat gap of 0.6 leases means the bucket, not the workers, was silent.
  clock.advance(LEASE_MS * 0.6);
  view = heard(view, 'a', clock.now());
  clock.advance(LEASE_MS * 0.6);
  t.ok(isAlive(view, 'b', clock.now(), LEASE_MS), 'b, silent 1.2 leases, is given a fresh lease from the end of the gap');
  clock.advance(LEASE_MS * 0.4 + 1);
  t.notOk(isAlive(view, 'b', clock.now(), LEASE_MS), 'and is dead once that lease is over');

  // Without a gap (a's heartbeats arrive every interval) b's silence counts.
  const start = clock.now();
  let steady = heard(heard(newLiveness(start), 'a', start), 'b', start);
  for (let ms = INTERVAL_MS; ms <= LEASE_MS + INTERVAL_MS; ms += INTERVAL_MS) steady = heard(steady, 'a', start + ms);
  t.notOk(isAlive(steady, 'b', start + LEASE_MS + INTERVAL_MS, LEASE_MS), 'one silent worker among talking ones is dead after a lease');
  t.ok(isAlive(steady, 'a', start + LEASE_MS + INTERVAL_MS, LEASE_MS));
});

t.test('liveness: a stall of this process restarts the clocks; ranLate tells a stalled timer', async (t) => {
  const clock = new FakeClock();
  let view = heard(newLiveness(clock.now()), 'a', clock.now());
  clock.advance(10 * LEASE_MS); // SIGSTOP
  t.ok(ranLate(clock.now() - 10 * LEASE_MS, clock.now(), LEASE_MS));
  t.notOk(ranLate(clock.now() - LEASE_MS / 2, clock.now(), LEASE_MS), 'half a lease late is on time');
  view = hear(view, { kind: 'stalled', now: clock.now() }, LEASE_MS);
  t.ok(isAlive(view, 'a', clock.now() + LEASE_MS, LEASE_MS), 'not declared dead before another lease');
});

t.test('lease: held while a heartbeat is stored every lease − interval; acks out of order; lost for good', async (t) => {
  const clock = new FakeClock();
  let lease = newLease(clock.now());
  const sentEarly = clock.now() + 100;
  const sentLate = clock.now() + 600;
  lease = leaseStored(lease, sentLate);
  lease = leaseStored(lease, sentEarly);
  t.same(lease, { phase: 'held', ackedAt: sentLate }, 'the newest sending time counts, whatever order the acks came in');
  clock.advance(600 + LEASE_MS - INTERVAL_MS);
  t.equal(leaseAt(lease, clock.now(), limits), lease, 'lease − interval after the newest stored heartbeat: held');
  clock.advance(1);
  const lost = leaseAt(lease, clock.now(), limits);
  t.same(lost, { phase: 'lost', at: clock.now(), sinceAckMs: LEASE_MS - INTERVAL_MS + 1 });
  t.equal(leaseStored(lost, clock.now()), lost, 'a heartbeat stored after the lease lapsed does not revive it');
  t.equal(leaseAt(lost, clock.now() + 1, limits), lost);
});

// ---- a dynamic worker: lifecycle, lease, drain ---------------------------------------------------------

function worker(clock: FakeClock) {
  let state: WorkerState = newWorker(clock.now());
  return {
    get state() {
      return state;
    },
    on(event: WorkerEvent): WorkerAction[] {
      const step = workerStep(state, event, limits);
      state = step.state;
      return step.actions;
    },
  };
}
const kinds = (actions: WorkerAction[]) => actions.map((a) => a.do);

t.test('worker: ticks put a heartbeat and sweep; a lapsed lease stops everything and ends the worker once', async (t) => {
  const clock = new FakeClock();
  const w = worker(clock);
  clock.advance(INTERVAL_MS);
  t.same(w.on({ kind: 'tick', now: clock.now(), idle: false }), [{ do: 'put', sentAt: clock.now() }, { do: 'sweep' }]);
  w.on({ kind: 'stored', sentAt: clock.now() });
  // Every put fails from here on; the ticks come on time.
  for (let ms = INTERVAL_MS; ms <= LEASE_MS - INTERVAL_MS; ms += INTERVAL_MS) {
    clock.advance(INTERVAL_MS);
    t.same(kinds(w.on({ kind: 'tick', now: clock.now(), idle: false })), ['put', 'sweep'], `heartbeats failing for ${ms} ms: still held`);
  }
  clock.advance(1);
  t.same(w.on({ kind: 'tick', now: clock.now(), idle: false }), [{ do: 'lose', sinceAckMs: LEASE_MS - INTERVAL_MS + 1 }, { do: 'end', how: 'lease-lost' }]);
  t.notOk(serving(w.state), 'it runs nothing any more');
  w.on({ kind: 'stored', sentAt: clock.now() });
  clock.advance(INTERVAL_MS);
  t.same(kinds(w.on({ kind: 'tick', now: clock.now(), idle: true })), ['sweep'], 'afterwards: no heartbeat, no second end');
  t.same(w.on({ kind: 'beat', now: clock.now() }), [], 'a heartbeat asked for is not sent');
});

t.test('worker: a heartbeat asked for after the lease lapsed (a resumed SIGSTOP) loses it instead', async (t) => {
  const clock = new FakeClock();
  const w = worker(clock);
  t.same(w.on({ kind: 'beat', now: clock.now() }), [{ do: 'put', sentAt: clock.now() }]);
  clock.advance(5 * LEASE_MS);
  t.same(kinds(w.on({ kind: 'beat', now: clock.now() })), ['lose', 'end']);
});

t.test('worker: a tick far behind its interval forgives the others', async (t) => {
  const clock = new FakeClock();
  const w = worker(clock);
  clock.advance(INTERVAL_MS);
  w.on({ kind: 'stored', sentAt: clock.now() });
  clock.advance(LEASE_MS / 2 + 1);
  t.same(kinds(w.on({ kind: 'tick', now: clock.now(), idle: false })), ['forgive', 'put', 'sweep']);
});

t.test('worker: drained by shopctl, it ends once it runs and is assigned nothing; closing goes draining → stopping → closed', async (t) => {
  const clock = new FakeClock();
  const w = worker(clock);
  t.same(w.on({ kind: 'tick', now: clock.now(), idle: true }).filter((a) => a.do === 'end'), [], 'an idle worker that is not draining stays');
  t.match(w.on({ kind: 'drain', now: clock.now() }), [{ do: 'log' }]);
  t.ok(draining(w.state), 'its heartbeat says draining');
  t.same(w.on({ kind: 'drain', now: clock.now() }), [], 'asked twice: once');
  t.same(kinds(w.on({ kind: 'tick', now: clock.now(), idle: false })), ['put', 'sweep'], 'still holding partitions');
  t.same(w.on({ kind: 'tick', now: clock.now(), idle: true }).at(-1), { do: 'end', how: 'drained' });

  const c = worker(clock);
  c.on({ kind: 'close', now: clock.now() });
  t.equal(c.state.life.phase, 'draining', 'close with its lease: hands over first');
  t.ok(serving(c.state), 'serving while it hands over');
  c.on({ kind: 'stop' });
  t.equal(c.state.life.phase, 'stopping');
  t.notOk(serving(c.state), 'stopping: takes nothing, lets go of all');
  t.same(c.on({ kind: 'beat', now: clock.now() }), [{ do: 'put', sentAt: clock.now() }], 'still tells the others what it let go of');
  t.same(c.on({ kind: 'tick', now: clock.now(), idle: true }).filter((a) => a.do === 'end'), [], 'a closing worker does not end as drained');
  c.on({ kind: 'closed' });
  t.same(c.on({ kind: 'beat', now: clock.now() }), [], 'deregistered: no heartbeat');
  t.same(c.on({ kind: 'drain', now: clock.now() }), []);

  const lost = worker(clock);
  clock.advance(LEASE_MS);
  lost.on({ kind: 'tick', now: clock.now(), idle: false });
  lost.on({ kind: 'close', now: clock.now() });
  t.equal(lost.state.life.phase, 'serving', 'close without its lease: nothing to hand over');
});

// ---- one partition's handoff --------------------------------------------------------------------------

const slot = (more: Partial<HostedView> = {}): HostedView => ({
  self: 'me',
  assigned: { worker: 'me', epoch: 5 },
  assignedAt: 0,
  runner: undefined,
  stale: undefined,
  retryAt: 0,
  prevHolds: false,
  serving: true,
  ...more,
});

t.test('handoff: take at the placement epoch; wait for a previous owner at most a lease; wait out a failed start and a stale epoch', async (t) => {
  const clock = new FakeClock();
  const at = clock.now();
  t.same(hostedStep(slot({ assignedAt: at }), at, LEASE_MS), { do: 'start', epoch: 5 });
  const moved = slot({ assigned: { worker: 'me', epoch: 5, prev: 'other' }, assignedAt: at, prevHolds: true });
  t.same(hostedStep(moved, at, LEASE_MS), { do: 'wait', why: 'prev-holds' }, 'the previous owner still lists it');
  clock.advance(LEASE_MS - 1);
  t.same(hostedStep(moved, clock.now(), LEASE_MS), { do: 'wait', why: 'prev-holds' });
  clock.advance(1);
  t.same(hostedStep(moved, clock.now(), LEASE_MS), { do: 'start', epoch: 5 }, 'a lease after the assignment was seen: taken anyway (the epoch fences it)');
  t.same(hostedStep({ ...moved, prevHolds: false }, at, LEASE_MS), { do: 'start', epoch: 5 }, 'let go: taken at once');
  t.same(hostedStep(slot({ retryAt: at + 10 }), at, LEASE_MS), { do: 'wait', why: 'backoff' });
  t.same(hostedStep(slot({ retryAt: at + 10 }), at + 10, LEASE_MS), { do: 'start', epoch: 5 });
  t.same(hostedStep(slot({ stale: 5 }), at, LEASE_MS), { do: 'wait', why: 'stale' }, 'Redis holds this epoch or newer: wait for the controller to raise it');
  t.same(hostedStep(slot({ stale: 4 }), at, LEASE_MS), { do: 'start', epoch: 5 });
  t.same(hostedStep(slot({ assigned: { worker: 'other', epoch: 5 } }), at, LEASE_MS), { do: 'nothing' });
  t.same(hostedStep(slot({ assigned: undefined }), at, LEASE_MS), { do: 'nothing' });
  t.same(hostedStep(slot({ serving: false }), at, LEASE_MS), { do: 'nothing' }, 'a worker that lost its lease or closes takes nothing');
});

t.test('handoff: let go when placed elsewhere, at another epoch, or when no longer serving; forget fenced runners', async (t) => {
  const running = { state: 'running' as const, epoch: 5 };
  t.same(hostedStep(slot({ runner: running }), 0, LEASE_MS), { do: 'nothing' }, 'running where it should');
  t.same(hostedStep(slot({ runner: { state: 'restarting', epoch: 5 } }), 0, LEASE_MS), { do: 'nothing' }, 'restarting by itself at the right epoch: left to it');
  t.same(hostedStep(slot({ runner: running, assigned: { worker: 'other', epoch: 6 } }), 0, LEASE_MS), { do: 'stop' });
  t.same(hostedStep(slot({ runner: running, assigned: { worker: 'me', epoch: 6 } }), 0, LEASE_MS), { do: 'stop' }, 'a new epoch here too: stop, then start at it');
  t.same(hostedStep(slot({ runner: running, assigned: undefined }), 0, LEASE_MS), { do: 'stop' });
  t.same(hostedStep(slot({ runner: running, serving: false }), 0, LEASE_MS), { do: 'stop' });
  t.same(hostedStep(slot({ runner: { state: 'fenced', epoch: 5 } }), 0, LEASE_MS), { do: 'forget' });
  t.same(hostedStep(slot({ runner: { state: 'stopped', epoch: 5 } }), 0, LEASE_MS), { do: 'check' });
  for (const state of ['idle', 'starting', 'stopping'] as const) t.same(hostedStep(slot({ runner: { state, epoch: 4 }, serving: false }), 0, LEASE_MS), { do: 'wait', why: 'runner-busy' }, state);
});

// ---- the controller's placement writes ------------------------------------------------------------------

function placementView(now: number, more: Partial<PlacementView> & { live?: Heartbeat[] } = {}): PlacementView {
  let liveness = newLiveness(now);
  for (const h of more.live ?? []) liveness = hear(liveness, { kind: 'heartbeat', hb: h, now, initial: false, storedAt: now }, LEASE_MS);
  return { kinds: ['stock'], partitions: 2, seed: '', leaseMs: LEASE_MS, placement: new Map(), pins: new Map(), drains: new Set(), ignore: () => false, liveness, ...more };
}
const placed = (worker: string, epoch: number, rev: number, at: number, prev?: string): Placed => ({ a: { worker, epoch, ...(prev ? { prev } : {}) }, rev, at });

t.test('placement: the partitions of a dead worker go to a live one at a higher epoch, without a previous owner to wait for', async (t) => {
  const clock = new FakeClock();
  const start = clock.now();
  const placement = new Map([
    ['stock.0', placed('dead', 3, 10, start)],
    ['stock.1', placed('b', 1, 11, start)],
  ]);
  clock.advance(LEASE_MS + 1);
  const view = placementView(clock.now(), { placement, live: [hb('b', { held: [{ k: 'stock', p: 1, e: 1, lag: 0 }] })] });
  t.same(decidePlacement(view, clock.now()), [{ do: 'place', key: 'stock.0', next: { worker: 'b', epoch: 4 }, rev: 10 }]);
  t.same(decidePlacement(placementView(clock.now(), { partitions: 1 }), clock.now()), [], 'no eligible worker: nothing changes, the commands wait');
});

t.test('placement: a move names the live previous owner; one move in flight per partition, for at most a lease', async (t) => {
  const clock = new FakeClock();
  const start = clock.now();
  const placement = new Map([
    ['stock.0', placed('a', 1, 1, start)],
    ['stock.1', placed('a', 1, 2, start)],
  ]);
  const a = hb('a', { held: [{ k: 'stock', p: 0, e: 1, lag: 0 }, { k: 'stock', p: 1, e: 1, lag: 0 }] });
  const actions = decidePlacement(placementView(start, { placement, live: [a, hb('b')] }), start);
  t.equal(actions.length, 1, 'b joins: one partition moves');
  t.match(actions[0], { do: 'place', next: { worker: 'b', epoch: 2, prev: 'a' } });

  // The move is written; b does not report it running yet.
  const key = (actions[0] as { key: string }).key;
  placement.set(key, placed('b', 2, 3, start, 'a'));
  const drained = (now: number) => placementView(now, { placement, live: [a, hb('b')], drains: new Set(['b']) });
  t.same(decidePlacement(drained(start + 100), start + 100), [], 'b is drained right away, but its move is in flight: not moved again');
  clock.advance(LEASE_MS);
  t.match(decidePlacement(drained(clock.now()), clock.now()), [{ do: 'place', key, next: { worker: 'a', epoch: 3, prev: 'b' } }], 'a lease later it is');
});

t.test('placement: an epoch Redis reports as newer is raised; pins and drains of workers gone are forgotten', async (t) => {
  const now = new FakeClock().now();
  const placement = new Map([['stock.0', placed('a', 2, 5, now)]]);
  const view = placementView(now, {
    partitions: 1,
    placement,
    live: [hb('a', { stale: { 'stock.0': 7 } })],
    pins: new Map([['stock.0', 'gone']]),
    drains: new Set(['gone-too']),
  });
  t.same(decidePlacement(view, now), [
    { do: 'place', key: 'stock.0', next: { worker: 'a', epoch: 8 }, rev: 5 },
    { do: 'forget', key: 'pin.stock.0' },
    { do: 'forget', key: 'drain.gone-too' },
  ]);
});

// ---- the supervisor's restarts ------------------------------------------------------------------------

const policy: RestartPolicy = { baseMs: 100, maxMs: 1000, stableMs: 10_000 };
const crash = { code: 3, signal: null };

function child() {
  let state: ChildState = newChild(policy);
  return {
    get state() {
      return state;
    },
    on(event: ChildEvent): ChildAction[] {
      const step = childStep(state, event, policy);
      state = step.state;
      return step.actions;
    },
  };
}

t.test('restart: the backoff doubles up to its cap, and starts again after a long enough run', async (t) => {
  const clock = new FakeClock();
  const c = child();
  c.on({ kind: 'launched', now: clock.now() });
  c.on({ kind: 'established' });
  const delays: number[] = [];
  for (let i = 0; i < 6; i++) {
    clock.advance(50);
    const [schedule] = c.on({ kind: 'exited', now: clock.now(), exit: crash, supervising: true });
    t.match(schedule, { do: 'schedule', restart: i + 1, upMs: 50, exit: crash });
    delays.push((schedule as Extract<ChildAction, { do: 'schedule' }>).delayMs);
    t.equal(c.state.life.phase, 'waiting');
    clock.advance(delays.at(-1)!);
    t.same(c.on({ kind: 'due', supervising: true }), [{ do: 'launch' }]);
    c.on({ kind: 'launched', now: clock.now() });
    t.equal(c.state.life.phase, 'up', 'a relaunched child is restarted again when it dies');
  }
  t.same(delays, [100, 200, 400, 800, 1000, 1000]);
  clock.advance(policy.stableMs);
  t.match(c.on({ kind: 'exited', now: clock.now(), exit: crash, supervising: true }), [{ do: 'schedule', delayMs: 100, restart: 7, upMs: policy.stableMs }], 'ran 10 s: from the first pause again');
});

t.test('restart: a relaunch that fails is another crash; a stopping supervisor gives up and cancels what is pending', async (t) => {
  const clock = new FakeClock();
  const c = child();
  c.on({ kind: 'launched', now: clock.now() });
  c.on({ kind: 'established' });
  c.on({ kind: 'exited', now: clock.now(), exit: crash, supervising: true });
  c.on({ kind: 'due', supervising: true });
  const error = new Error('spawn ENOENT');
  t.match(c.on({ kind: 'launch-failed', now: clock.now(), error, supervising: true }), [{ do: 'schedule', delayMs: 200, restart: 2, upMs: 0, exit: { code: null, error } }]);
  t.same(c.on({ kind: 'stop' }), [{ do: 'cancel' }], 'stop cancels the pending restart');
  t.same(c.on({ kind: 'due', supervising: false }), [], 'a timer that fires anyway launches nothing');
  t.same(c.on({ kind: 'launched', now: clock.now() }), []);
  t.equal(c.state.life.phase, 'stopped');

  const d = child();
  d.on({ kind: 'launched', now: clock.now() });
  d.on({ kind: 'established' });
  t.same(d.on({ kind: 'exited', now: clock.now(), exit: crash, supervising: false }), [], 'the supervisor is draining: no restart');
  t.equal(d.state.life.phase, 'down');
  const w = child();
  w.on({ kind: 'launched', now: clock.now() });
  w.on({ kind: 'established' });
  w.on({ kind: 'exited', now: clock.now(), exit: crash, supervising: true });
  t.same(w.on({ kind: 'due', supervising: false }), [], 'stopping by the time the pause ends: given up');
  t.equal(w.state.life.phase, 'down');
});

t.test('restart: a server that dies before it answered is not restarted (its start fails instead)', async (t) => {
  const c = child();
  c.on({ kind: 'launched', now: 0 });
  t.equal(c.state.life.phase, 'starting');
  t.same(c.on({ kind: 'exited', now: 5, exit: crash, supervising: true }), []);
  t.equal(c.state.life.phase, 'down');
});

t.test('fake clock: timers fire in order as time passes, intervals repeat, cleared ones do not', async (t) => {
  const clock = new FakeClock(0);
  const fired: string[] = [];
  clock.setTimeout(() => fired.push(`b@${clock.now()}`), 20);
  clock.setTimeout(() => fired.push(`a@${clock.now()}`), 10);
  const gone = clock.setTimeout(() => fired.push('never'), 15);
  const every = clock.setInterval(() => fired.push(`i@${clock.now()}`), 8);
  clock.clearTimeout(gone);
  t.same(clock.delays(), [8, 10, 20]);
  clock.advance(25);
  t.same(fired, ['i@8', 'a@10', 'i@16', 'b@20', 'i@24']);
  clock.clearInterval(every);
  clock.advance(100);
  t.equal(fired.length, 5);
  t.equal(clock.now(), 125);
  const slept = clock.sleep(5).then(() => clock.now());
  clock.advance(5);
  t.equal(await slept, 130);
});
