import t from 'tap';
import { ADMIN_SETTLE_DEADLINE_MS, adminRefusal, isLoopbackUrl, pendingOf, planAdmin, replyOf, resolveWorker, unsettled, type AdminRequest, type AdminView, type SettleView } from '../../src/placement/admin-rules.js';
import type { Placed } from '../../src/placement/moves.js';
import type { Heartbeat } from '../../src/placement/placement.js';

const hb = (id: string, over: Partial<Heartbeat> = {}): Heartbeat => ({ id, pid: 1, host: 'h', kinds: ['order', 'stock'], adminPort: 0, draining: false, held: [], stale: {}, ...over });
const placed = (worker: string, epoch: number): Placed => ({ a: { worker, epoch }, rev: 1, at: 0 });

const view = (over: Partial<AdminView> = {}): AdminView => ({
  kinds: ['order', 'stock'],
  partitions: 4,
  live: [hb('worker-0-aaaaaa'), hb('worker-1-bbbbbb', { kinds: ['stock'] })],
  drains: new Set(),
  placement: new Map([
    ['order.0', placed('worker-0-aaaaaa', 3)],
    ['stock.1', placed('worker-0-aaaaaa', 2)],
  ]),
  pins: new Map(),
  ...over,
});

t.test('who may send admin requests: the token when one is set, else only over loopback NATS', async (t) => {
  t.equal(adminRefusal('s3cret', 's3cret', 'nats://10.0.0.1:4222'), undefined, 'the right token, anywhere');
  t.match(adminRefusal('s3cret', 's3cre', 'nats://127.0.0.1:4222'), /need the admin token/, 'a wrong token, even on loopback');
  t.match(adminRefusal('s3cret', '', 'nats://127.0.0.1:4222'), /need the admin token/, 'no token');
  t.equal(adminRefusal('', '', 'nats://127.0.0.1:4222,nats://localhost:4223'), undefined, 'no token set, loopback');
  t.match(adminRefusal('', '', 'nats://127.0.0.1:4222,nats://10.0.0.2:4222'), /not on loopback and no adminToken is set/, 'one server elsewhere');
  t.ok(isLoopbackUrl('tls://user:pw@[::1]:4222/'));
  t.notOk(isLoopbackUrl('nats://127.0.0.1.example.com:4222'));
});

t.test('a worker is named by its id or the one id it starts', async (t) => {
  const live = ['worker-0-aaaaaa', 'worker-1-bbbbbb', 'worker-10-cccccc'];
  t.same(resolveWorker('worker-1-bbbbbb', live), { ok: true, worker: 'worker-1-bbbbbb' });
  t.same(resolveWorker('worker-0', live), { ok: true, worker: 'worker-0-aaaaaa' });
  t.match(resolveWorker('worker-1', live), { ok: false, error: /names several workers: worker-1-bbbbbb, worker-10-cccccc/ });
  t.match(resolveWorker('worker-9', live), { ok: false, error: /no live worker "worker-9"; live: worker-0-aaaaaa/ });
  t.match(resolveWorker('w', []), { ok: false, error: /live: none/ });
});

t.test('a move is allowed to a live worker hosting the kind and not draining, and pins the partition there', async (t) => {
  const move = (over: Partial<Extract<AdminRequest, { op: 'move' }>>, v = view()) => planAdmin({ op: 'move', kind: 'order', partition: 0, worker: 'worker-0', ...over }, v);
  t.same(move({}), { ok: true, op: 'move', kind: 'order', partition: 0, key: 'order.0', worker: 'worker-0-aaaaaa', from: 'worker-0-aaaaaa' });
  t.same(move({ kind: 'stock', partition: 3, worker: 'worker-1' }), { ok: true, op: 'move', kind: 'stock', partition: 3, key: 'stock.3', worker: 'worker-1-bbbbbb', from: undefined });
  t.match(move({ kind: 'cart' as never }), { ok: false, error: 'unknown kind "cart"; this deployment runs order, stock' });
  t.match(move({ partition: 4 }), { ok: false, error: 'partition must be 0..3, got 4' });
  t.match(move({ partition: 1.5 }), { ok: false, error: /partition must be/ });
  t.match(move({ worker: 'worker-1' }), { ok: false, error: 'worker worker-1-bbbbbb does not host order (it hosts stock)' });
  t.match(move({}, view({ drains: new Set(['worker-0-aaaaaa']) })), { ok: false, error: 'worker worker-0-aaaaaa is draining' });
  t.match(move({}, view({ live: [hb('worker-0-aaaaaa', { draining: true })] })), { ok: false, error: /is draining/ });
  t.match(move({ worker: 'nobody' }), { ok: false, error: /no live worker/ });
});

t.test('a drain marks a live worker, counting what is placed on it; a rebalance drops every pin', async (t) => {
  t.same(planAdmin({ op: 'drain', worker: 'worker-0' }, view()), { ok: true, op: 'drain', worker: 'worker-0-aaaaaa', held: 2 });
  t.same(planAdmin({ op: 'drain', worker: 'worker-1' }, view()), { ok: true, op: 'drain', worker: 'worker-1-bbbbbb', held: 0 });
  t.match(planAdmin({ op: 'drain', worker: 'gone' }, view()), { ok: false });
  t.same(planAdmin({ op: 'rebalance' }, view({ pins: new Map([['order.1', 'w']]) })), { ok: true, op: 'rebalance', unpin: ['order.1'] });
  t.match(planAdmin({ op: 'split' } as unknown as AdminRequest, view()), { ok: false, error: 'unknown admin op "split"; known: move, drain, rebalance' });
});

t.test('pending: what is not yet held at its placement epoch by its placed worker', async (t) => {
  const placement = new Map([
    ['order.0', placed('w1', 3)],
    ['order.1', placed('w2', 5)],
  ]);
  const beats = new Map([
    ['w1', hb('w1', { held: [{ k: 'order', p: 0, e: 3, lag: 0 }] })],
    ['w2', hb('w2', { held: [{ k: 'order', p: 1, e: 4, lag: 0 }] })],
  ]);
  const alive = new Set(['w1', 'w2']);
  const v: SettleView = { placement, heartbeatOf: (w) => beats.get(w), alive: (w) => alive.has(w) };
  t.same(unsettled(v), ['order.1'], 'w2 runs order.1 at an older epoch');
  t.same(pendingOf({ op: 'rebalance', unpin: [] }, v), ['order.1']);
  t.same(pendingOf({ op: 'move', kind: 'order', partition: 0, key: 'order.0', worker: 'w1', from: 'w2' }, v), [], 'moved and running');
  t.same(pendingOf({ op: 'move', kind: 'order', partition: 0, key: 'order.0', worker: 'w2', from: 'w1' }, v), ['order.0'], 'not yet placed there');
  t.same(pendingOf({ op: 'drain', worker: 'w2', held: 1 }, v), ['order.1', 'order.1'], 'placed there and still running there');
  alive.delete('w2');
  t.same(pendingOf({ op: 'drain', worker: 'w2', held: 1 }, v), ['order.1'], 'a dead worker runs nothing');
});

t.test('the answers', async (t) => {
  const placement = new Map([['order.0', placed('w1', 7)]]);
  const done = { moves: 2, ms: 40, placement };
  const move = { op: 'move', kind: 'order', partition: 0, key: 'order.0', worker: 'w1', from: undefined } as const;
  t.same(replyOf(move, [], done), { ok: true, message: 'moved order 0: nobody -> w1 (epoch 7)', moves: 2, ms: 40 });
  t.same(replyOf(move, ['order.0'], done), { ok: false, error: `order.0 is not yet running on w1 after ${ADMIN_SETTLE_DEADLINE_MS} ms` });
  t.same(replyOf({ op: 'drain', worker: 'w2', held: 3 }, [], done), { ok: true, message: 'drained w2: 3 partitions moved; it exits now', moves: 2, ms: 40 });
  t.match(replyOf({ op: 'drain', worker: 'w2', held: 3 }, ['order.1', 'order.1'], done), { ok: false, error: /^w2 still holds order\.1 after/ });
  t.same(replyOf({ op: 'rebalance', unpin: [] }, [], done), { ok: true, message: 'balanced: 2 partitions moved', moves: 2, ms: 40 });
  t.match(replyOf({ op: 'rebalance', unpin: [] }, ['a', 'b'], done), { ok: false, error: /not settled after \d+ ms: a b/ });
});
