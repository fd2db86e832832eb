import t from 'tap';
import { StaleEpochError } from '../../src/datapath/store.js';
import type { Lease } from '../../src/placement/liveness.js';
import type { Heartbeat } from '../../src/placement/placement.js';
import { afterFailedStart, handoverDone, idle, newlyServing, seeAssignment, START_RETRY_BACKOFFS, unstoredHeartbeatLevel } from '../../src/placement/worker-rules.js';

const hb = (id: string, over: Partial<Heartbeat> = {}): Heartbeat => ({ id, pid: 1, host: 'h', kinds: ['order', 'stock'], adminPort: 0, draining: false, held: [], stale: {}, ...over });

t.test('a failed start: a stale epoch is reported, anything else retried after START_RETRY_BACKOFFS backoffs', async (t) => {
  t.same(afterFailedStart(new StaleEpochError(3, 7), 1000, 50), { then: 'report-stale', stored: 7 });
  t.same(afterFailedStart(new Error('ECONNREFUSED'), 1000, 50), { then: 'retry', retryAt: 1000 + 50 * START_RETRY_BACKOFFS });
});

t.test('an assignment is new only with another worker or epoch', async (t) => {
  const a = { worker: 'w1', epoch: 4 };
  t.same(seeAssignment({ assignedAt: 0 }, a, 100), { assigned: a, assignedAt: 100, fresh: true }, 'the first one');
  const cur = { assigned: a, assignedAt: 100 };
  const same = seeAssignment(cur, { worker: 'w1', epoch: 4, prev: 'w0' }, 200);
  t.equal(same.assigned, a, 'the same worker and epoch keeps what is followed');
  t.equal(same.assignedAt, 100, 'and the wait for the previous owner goes on from the first sight');
  t.equal(same.fresh, false);
  t.same(seeAssignment(cur, { worker: 'w1', epoch: 5 }, 300), { assigned: { worker: 'w1', epoch: 5 }, assignedAt: 300, fresh: true }, 'a new epoch');
  t.same(seeAssignment(cur, { worker: 'w2', epoch: 4 }, 300), { assigned: { worker: 'w2', epoch: 4 }, assignedAt: 300, fresh: true }, 'another worker');
  t.same(seeAssignment(cur, undefined, 300), { assigned: undefined, assignedAt: 100, fresh: false }, 'deleted: nothing followed, the stale epoch kept');
});

t.test('idle: no runner and nothing placed on it', async (t) => {
  t.ok(idle([{}, { assigned: { worker: 'w2', epoch: 1 } }], 'w1'));
  t.notOk(idle([{ assigned: { worker: 'w1', epoch: 1 } }], 'w1'), 'placed on it');
  t.notOk(idle([{ runner: {} }], 'w1'), 'a runner left');
});

t.test('the handover is done when nothing held can go anywhere', async (t) => {
  const live = [hb('w1'), hb('w2', { kinds: ['stock'] }), hb('w3', { kinds: ['order'], draining: true })];
  t.ok(handoverDone([], live, 'w1'), 'nothing held');
  t.ok(handoverDone([{ kind: 'order', state: 'running' }], live, 'w1'), 'the only other order worker is draining');
  t.notOk(handoverDone([{ kind: 'stock', state: 'running' }], live, 'w1'), 'w2 can take stock');
  t.ok(handoverDone([{ kind: 'stock', state: 'fenced' }], live, 'w1'), 'a fenced runner is not held');
  t.notOk(handoverDone([{ kind: 'order', state: 'running' }, { kind: 'stock', state: 'stopping' }], live, 'w1'), 'one that can move is enough to wait');
});

t.test('newly serving: placed on the worker, running, not seen at that epoch', async (t) => {
  const placed = new Map([
    ['order.0', 'w2'],
    ['order.1', 'w2'],
    ['order.2', 'w3'],
  ]);
  const held: Heartbeat['held'] = [
    { k: 'order', p: 0, e: 5, lag: 0 },
    { k: 'order', p: 1, e: 2, lag: 0, t: 'restarting', n: 1 },
    { k: 'order', p: 2, e: 1, lag: 0 },
  ];
  t.same(newlyServing('w2', held, placed, new Map()), [{ kind: 'order', partition: 0, key: 'order.0', mark: 'w2@5' }], 'not restarting, not placed elsewhere');
  t.same(newlyServing('w2', held, placed, new Map([['order.0', 'w2@5']])), [], 'seen already');
  t.equal(newlyServing('w2', held, placed, new Map([['order.0', 'w2@4']])).length, 1, 'seen at an older epoch');
  t.equal(newlyServing('w2', [held[0]!, held[0]!], placed, new Map()).length, 1, 'once per epoch');
});

t.test('an unstored heartbeat warns only when the pulses do not hold the lease either', async (t) => {
  const held: Lease = { phase: 'held', ackedAt: 1000 };
  t.same(unstoredHeartbeatLevel(held, 1400, 200), { level: 'debug', sinceLastMs: 400 });
  t.same(unstoredHeartbeatLevel(held, 1401, 200), { level: 'warn', sinceLastMs: 401 });
  t.same(unstoredHeartbeatLevel({ phase: 'lost', at: 2000, sinceAckMs: 900 }, 2100, 200), { level: 'warn', sinceLastMs: undefined });
});
