/**
 * The batch loop alone, through its seam: partitions are fakes implementing Member over in-memory queues, and the
 * commit is a function the test settles by hand. What is checked: the next batch is applied while the previous one
 * commits, on top of its drafts; it commits only after that one did; when that one is refused or fails, the next
 * is thrown away and every message is applied again, in order, exactly once.
 */
import type { JsMsg } from 'nats';
import t from 'tap';
import { actorOf } from '../src/actors/index.js';
import { encode } from '../src/codec.js';
import { loadConfig, type Kind } from '../src/config.js';
import { createLog } from '../src/log.js';
import { BatchLoop, type Committed, type Member, type Taken } from '../src/datapath/batch-loop.js';
import type { Tables } from '../src/datapath/draft.js';
import type { CommitResult, PartitionStore, PreparedBatch } from '../src/datapath/store.js';
import { waitFor } from './helpers/servers.js';

const config = loadConfig({ SHOP_PROFILE: 'test' }, { partitions: 2 });
const log = createLog('test', 'error');

/** What the fake commit saw: per transaction, the partitions in it and their cursors. */
interface Call {
  parts: { name: string; cursor: number }[];
  settle(results: CommitResult[] | Error): void;
}

/** A partition over an in-memory queue; its "store" prepares a batch as a record the fake commit reads. */
class FakeMember implements Member {
  readonly actor;
  readonly log = log;
  live: Tables;
  epoch = 1;
  cursor = 0;
  local = 0;
  commitCount = 0;
  state: 'running' | 'fenced' | 'failed' = 'running';
  queue: JsMsg[] = [];
  readonly commits: Committed[] = [];
  readonly store: PartitionStore;

  constructor(
    readonly kind: Kind,
    readonly partition: number,
  ) {
    this.actor = actorOf(kind);
    this.live = new Map(this.actor.tables.map((name: string) => [name, new Map()]));
    const name = `${kind}.${partition}`;
    this.store = { prepare: (w) => ({ name, cursor: w.cursor }) as unknown as PreparedBatch } as PartitionStore;
  }

  /** Message ids committed so far (the runner keeps them for a while). */
  readonly messageIds = new Set<string>();

  push(seq: number, cmd: unknown, msgId?: string): void {
    const headers = msgId === undefined ? undefined : { get: (h: string) => (h === 'Nats-Msg-Id' ? msgId : '') };
    this.queue.push({ seq, data: encode({ c: cmd, r: `${names}x.${seq}` }), info: { pending: 0 }, headers } as unknown as JsMsg);
  }
  ready = () => this.state === 'running' && this.queue.length > 0;
  accepts = () => this.state === 'running';
  take(max: number): Taken {
    const stream = this.queue.splice(0, max);
    return { stream, parcels: [] };
  }
  giveBack(taken: Taken): void {
    if (this.state === 'running') this.queue.unshift(...taken.stream);
  }
  seen = () => false;
  seenMessage = (id: string) => this.messageIds.has(id);
  takeDone = () => [];
  giveBackDone(): void {}
  committed(c: Committed): void {
    c.draft.publish();
    this.cursor = c.cursor;
    this.local = c.local;
    this.commitCount = c.commitCount;
    this.commits.push(c);
    for (const id of c.messageIds) this.messageIds.add(id);
  }
  fenced(): void {
    this.state = 'fenced';
    this.queue = [];
  }
  failed(): void {
    this.state = 'failed';
    this.queue = [];
  }
  stock(id: string): number | undefined {
    return (this.live.get('items')!.get(id) as { stock: number } | undefined)?.stock;
  }
}

const names = `${config.streamPrefix ? config.streamPrefix + '.' : ''}_reply.`;

function rig() {
  const calls: Call[] = [];
  const loop = new BatchLoop({
    config,
    log,
    ack: () => {},
    commit: (batches) =>
      new Promise<CommitResult[]>((resolve, reject) => {
        const parts = batches.map((b) => b as unknown as { name: string; cursor: number });
        calls.push({ parts, settle: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
      }),
  });
  return { loop, calls };
}

const add = (id: string, amount: number) => ({ k: 'add', id, amount });

t.test('the next batch is applied while the previous one commits, on its drafts, and commits after it', async (t) => {
  const { loop, calls } = rig();
  const a = new FakeMember('stock', 0);
  a.live.get('items')!.set('x', { stock: 0, price: 1 });
  a.push(1, add('x', 1));
  loop.add(a);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  // While the first batch is in Redis, more arrives: it is applied on top of the first batch's draft.
  a.push(2, add('x', 10));
  loop.wake();
  await waitFor(() => a.queue.length === 0, { deadlineMs: 5000, what: 'the second batch to be applied' });
  t.equal(calls.length, 1, 'one commit in flight at a time');
  t.equal(a.stock('x'), 0, 'nothing is visible before a commit');
  calls[0]!.settle(['committed']);
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'the second commit' });
  t.equal(a.stock('x'), 1, 'the first batch is visible once committed');
  t.same(calls[1]!.parts, [{ name: 'stock.0', cursor: 2 }], 'the second batch goes on from the first one\'s cursor');
  calls[1]!.settle(['committed']);
  await waitFor(() => a.commits.length === 2, { deadlineMs: 5000, what: 'the second batch to be committed' });
  t.equal(a.stock('x'), 11, 'built on the first: 1 + 10');
});

t.test('a batch refused (one partition fenced): the batch applied on top of it is thrown away, every message applied again in order, once', async (t) => {
  const { loop, calls } = rig();
  const a = new FakeMember('stock', 0);
  const b = new FakeMember('stock', 1);
  for (const m of [a, b]) m.live.get('items')!.set('x', { stock: 0, price: 1 });
  loop.add(a);
  loop.add(b);
  a.push(1, add('x', 1));
  b.push(1, add('x', 1));
  loop.wake();
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  t.same(calls[0]!.parts.map((p) => p.name).sort(), ['stock.0', 'stock.1'], 'both partitions in one transaction');
  a.push(2, add('x', 10));
  loop.wake();
  await waitFor(() => a.queue.length === 0, { deadlineMs: 5000, what: 'the second batch to be applied' });
  // stock.1 turns out fenced: nothing of the transaction was written.
  const order = calls[0]!.parts.map((p) => p.name);
  calls[0]!.settle(order.map((n) => (n === 'stock.1' ? 'fenced' : 'withheld')));
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'a commit of the messages applied again' });
  t.equal(b.state, 'fenced');
  t.same(calls[1]!.parts, [{ name: 'stock.0', cursor: 2 }], 'stock.0 applies both of its messages again, in one batch');
  calls[1]!.settle(['committed']);
  await waitFor(() => a.commits.length === 1, { deadlineMs: 5000, what: 'the commit' });
  t.equal(a.stock('x'), 11, 'each applied exactly once');
  t.equal(a.cursor, 2);
});

t.test('a commit that fails (transport): its partitions restart; another partition\'s batch on top goes back to its queue', async (t) => {
  const { loop, calls } = rig();
  const a = new FakeMember('stock', 0);
  const b = new FakeMember('stock', 1);
  for (const m of [a, b]) m.live.get('items')!.set('x', { stock: 0, price: 1 });
  a.push(1, add('x', 1));
  loop.add(a);
  loop.add(b);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  b.push(1, add('x', 5));
  loop.wake();
  await waitFor(() => b.queue.length === 0, { deadlineMs: 5000, what: 'the second batch to be applied' });
  calls[0]!.settle(new Error('connection lost'));
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'stock.1 committing on its own' });
  t.equal(a.state, 'failed', 'stock.0 takes itself again from Redis');
  t.same(calls[1]!.parts, [{ name: 'stock.1', cursor: 1 }]);
  calls[1]!.settle(['committed']);
  await waitFor(() => b.commits.length === 1, { deadlineMs: 5000, what: 'the commit' });
  t.equal(b.stock('x'), 5, 'applied once');
});

t.test('a second copy of a stream message (the same Nats-Msg-Id, stored twice) is passed: in the same batch or a later one, the cursor moves over it', async (t) => {
  const { loop, calls } = rig();
  const a = new FakeMember('stock', 0);
  a.live.get('items')!.set('x', { stock: 0, price: 1 });
  a.push(1, add('x', 3), 'g.1');
  a.push(2, add('x', 3), 'g.1');
  a.push(3, add('x', 5), 'g.2');
  loop.add(a);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  t.same(calls[0]!.parts, [{ name: 'stock.0', cursor: 3 }], 'the cursor covers the copy');
  calls[0]!.settle(['committed']);
  await waitFor(() => a.commits.length === 1, { deadlineMs: 5000, what: 'the first batch to be committed' });
  t.equal(a.stock('x'), 8, 'the copy in the same batch changed nothing: 3 + 5');
  t.same(a.commits[0]!.messageIds, ['g.1', 'g.2'], 'the batch names the ids it applied');
  a.push(4, add('x', 5), 'g.2');
  a.push(5, add('x', 1), 'g.3');
  loop.wake();
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'the second commit' });
  calls[1]!.settle(['committed']);
  await waitFor(() => a.commits.length === 2, { deadlineMs: 5000, what: 'the second batch to be committed' });
  t.equal(a.stock('x'), 9, 'the copy of a message of an earlier batch changed nothing: 8 + 1');
  t.equal(a.cursor, 5);
});

t.test('a second copy applied while the batch holding the first is still committing is passed too (the pipelined batch looks below)', async (t) => {
  const { loop, calls } = rig();
  const a = new FakeMember('stock', 0);
  a.live.get('items')!.set('x', { stock: 0, price: 1 });
  a.push(1, add('x', 3), 'g.1');
  loop.add(a);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  // The first batch is in flight: the copy arrives now and is applied on top of it.
  a.push(2, add('x', 3), 'g.1');
  a.push(3, add('x', 2), 'g.2');
  loop.wake();
  await waitFor(() => a.queue.length === 0, { deadlineMs: 5000, what: 'the copy to be taken into the next batch' });
  calls[0]!.settle(['committed']);
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'the second commit' });
  t.same(calls[1]!.parts, [{ name: 'stock.0', cursor: 3 }], 'the cursor covers the copy');
  calls[1]!.settle(['committed']);
  await waitFor(() => a.commits.length === 2, { deadlineMs: 5000, what: 'both batches committed' });
  t.equal(a.stock('x'), 5, 'applied once: 3 + 2');
  t.same(a.commits[1]!.messageIds, ['g.2']);
});
