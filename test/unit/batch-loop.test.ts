/**
 * The batch loop alone, through its seam: partitions are fakes implementing Participant over in-memory queues, and the
 * commit is a function the test settles by hand. What is checked: the next batch is applied while the previous one
 * commits, on top of its drafts; it commits only after that one did; when that one is refused or fails, the next
 * is thrown away and every message is applied again, in order, exactly once.
 */
import { Packr } from 'msgpackr';
import t from 'tap';
import { actorOf } from '../../src/actors/index.js';
import { encode } from '../../src/codec.js';
import { loadConfig, type Kind } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { BUNDLE_MAX } from '../../src/protocol.js';
import { drawIn } from '../../src/partitioning.js';
import { BatchLoop } from '../../src/datapath/batch-loop.js';
import type { Committed, Inbound, Participant, StreamMessage, Taken } from '../../src/datapath/participant.js';
import { decodeEntry, type OutboxEntry } from '../../src/datapath/outbox.js';
import type { Tables } from '../../src/datapath/draft.js';
import type { PreparedBatch } from '../../src/datapath/commit-group.js';
import type { PartitionStore } from '../../src/datapath/store.js';
import type { CommitResult } from '../../src/datapath/store-scripts.js';
import { waitFor } from '../helpers/servers.js';

const config = loadConfig({ SHOP_PROFILE: 'test' }, { partitions: 2 });
const log = createLog('test', 'error');

/** What the fake commit saw: per transaction, the partitions in it and their cursors. */
interface Call {
  parts: { name: string; cursor: number }[];
  settle(results: CommitResult[] | Error): void;
}

/** A partition over an in-memory queue; its "store" prepares a batch as a record the fake commit reads. */
class FakeParticipant implements Participant {
  readonly actor;
  readonly log = log;
  live: Tables;
  epoch = 1;
  cursor = 0;
  local = 0;
  commitCount = 0;
  state: 'running' | 'fenced' | 'failed' = 'running';
  queue: StreamMessage[] = [];
  /** Saga parcels from other workers, taken with the stream messages. */
  inbound: Inbound[] = [];
  readonly commits: Committed[] = [];
  readonly store: PartitionStore;

  /** What each prepared batch owed (its outbox entry), in order. */
  readonly owed: OutboxEntry[] = [];

  /** `throws`: the actor throws this for a command on the item `boom` (a bug, or a value the checks let through). */
  constructor(
    readonly kind: Kind,
    readonly partition: number,
    throws?: unknown,
  ) {
    const actor = actorOf(kind);
    this.actor =
      throws === undefined
        ? actor
        : {
            ...actor,
            apply: (draft: Parameters<typeof actor.apply>[0], cmd: unknown, ctx: Parameters<typeof actor.apply>[2]) => {
              if ((cmd as { id?: unknown }).id === 'boom') throw throws;
              return actor.apply(draft, cmd as never, ctx);
            },
          };
    this.live = new Map(this.actor.tables.map((name: string) => [name, new Map()]));
    const name = `${kind}.${partition}`;
    this.store = {
      prepare: (w) => {
        if (w.outbox) this.owed.push(decodeEntry(w.outbox));
        return { name, cursor: w.cursor } as unknown as PreparedBatch;
      },
    } as PartitionStore;
  }

  /** Message ids committed so far (the runner keeps them for a while). */
  readonly messageIds = new Set<string>();

  push(seq: number, cmd: unknown, msgId?: string): void {
    this.pushRaw(seq, encode({ c: cmd, r: `${names}x.${seq}` }), msgId);
  }
  pushRaw(seq: number, data: Uint8Array, msgId?: string): void {
    const headers = msgId === undefined ? undefined : { get: (h: string) => (h === 'Nats-Msg-Id' ? msgId : '') };
    this.queue.push({ seq, data, pending: 0, headers: headers as StreamMessage['headers'] });
  }
  /** Reply subjects answered and dead letters stored, over every batch prepared. */
  answered = () => this.owed.flatMap((e) => e.replies.map(([to]) => to));
  deadLetters = () => this.owed.flatMap((e) => e.dead);
  /** A parcel of saga commands from a partition of another worker. */
  pushParcel(cmds: unknown[]): void {
    this.inbound.push({ id: '', ackTo: '', commands: encode(cmds) });
  }
  ready = () => this.state === 'running' && (this.queue.length > 0 || this.inbound.length > 0);
  accepts = () => this.state === 'running';
  take(max: number): Taken {
    const stream = this.queue.splice(0, max);
    return { stream, parcels: this.inbound.splice(0) };
  }
  giveBack(taken: Taken): void {
    if (this.state !== 'running') return;
    this.queue.unshift(...taken.stream);
    this.inbound.unshift(...taken.parcels);
  }
  seen = () => false;
  seenMessage = (id: string) => this.messageIds.has(id);
  takeDone = () => [];
  giveBackDone(): void {}
  committed(c: Committed): void {
    c.draft.publish();
    this.cursor = c.cursor;
    this.local = c.local;
    this.commitCount++;
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

/** `sliceMs`: long, so that a loaded machine does not cut the batch a test counts on (BATCH_SLICE_MS). */
function rig() {
  const calls: Call[] = [];
  const loop = new BatchLoop({
    config,
    log,
    sliceMs: 60_000,
    ack: () => {},
    commit: (batches) =>
      new Promise<CommitResult[]>((resolve, reject) => {
        const parts = batches.map((b) => b as unknown as { name: string; cursor: number });
        calls.push({ parts, settle: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
      }),
  });
  return { loop, calls };
}

/** A rig with one stock partition holding the item x (stock 0); its actor throws `throws` on the item boom. */
function rigWithX(throws?: unknown) {
  const { loop, calls } = rig();
  const a = new FakeParticipant('stock', 0, throws);
  a.live.get('items')!.set('x', { stock: 0, price: 1 });
  return { loop, calls, a };
}

const add = (id: string, amount: number) => ({ k: 'add', id, amount });

/** Two stock partitions holding x (stock 0), in a loop whose first commit (a's add of 1) is out. */
async function twoWithACommitOut() {
  const { loop, calls } = rig();
  const a = new FakeParticipant('stock', 0);
  const b = new FakeParticipant('stock', 1);
  for (const m of [a, b]) m.live.get('items')!.set('x', { stock: 0, price: 1 });
  a.push(1, add('x', 1));
  loop.add(a);
  loop.add(b);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  return { loop, calls, a, b };
}

t.test('the replies of a batch\'s partitions are stored as one outbox entry, in one partition\'s outbox, and sent by it once committed', async (t) => {
  const { loop, calls } = rig();
  const participants = [0, 1, 2].map((p) => new FakeParticipant('stock', p));
  for (const m of participants) loop.add(m);
  // Queued together, after every partition joined the loop: one batch takes them all.
  participants.forEach((m, p) => {
    m.live.get('items')!.set('x', { stock: 0, price: 1 });
    m.push(1, add('x', p + 1));
    m.push(2, add('x', 10));
  });
  loop.wake();
  await waitFor(() => calls.length === 1 && participants.every((m) => m.queue.length === 0), { deadlineMs: 5000, what: 'the batch of the three partitions' });
  t.equal(calls[0]!.parts.length, 3, 'one transaction of three partitions');
  t.same(participants.map((m) => m.owed.length), [1, 0, 0], 'one stored outbox entry, not one per partition');
  t.equal(participants[0]!.owed[0]!.replies.length, 6, 'holding every reply of the batch');
  calls[0]!.settle(['committed', 'committed', 'committed']);
  await waitFor(() => participants.every((m) => m.commits.length === 1), { deadlineMs: 5000, what: 'the commit' });
  t.same(participants.map((m) => m.commits[0]!.entry?.replies.length ?? 0), [6, 0, 0], 'the carrier sends them all');
  t.same(participants.map((m) => m.commits[0]!.field === ''), [false, true, true], 'and only it stores a field');
});

t.test('the next batch is applied while the previous one commits, on its drafts, and commits after it', async (t) => {
  const { loop, calls, a } = rigWithX();
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

t.test('what arrives after the next batch was applied, while the commit below it is out, joins that batch: one commit, not one per arrival', async (t) => {
  const { loop, calls, a, b } = await twoWithACommitOut();
  a.push(2, add('x', 10));
  loop.wake();
  await waitFor(() => a.queue.length === 0, { deadlineMs: 5000, what: 'the next batch to be applied at the first wake' });
  // The commit is still out: what comes now waits for it, and then goes with the batch applied at the first wake.
  a.push(3, add('x', 100));
  b.push(1, add('x', 5));
  loop.wake();
  calls[0]!.settle(['committed', 'committed']);
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'the second commit' });
  t.same(calls[1]!.parts, [{ name: 'stock.0', cursor: 3 }, { name: 'stock.1', cursor: 1 }], 'the second commit holds everything that was queued when the first returned');
  t.same([a.queue.length, b.queue.length], [0, 0], 'nothing left for a third');
  calls[1]!.settle(['committed', 'committed']);
  await waitFor(() => a.commits.length === 2 && b.commits.length === 1, { deadlineMs: 5000, what: 'the second batch to be committed' });
  t.same([a.stock('x'), b.stock('x')], [111, 5], 'each command applied once, in order');
  t.equal(calls.length, 2, 'two commits in all');
});

t.test('a batch refused (one partition fenced): the batch applied on top of it is thrown away, every message applied again in order, once', async (t) => {
  const { loop, calls } = rig();
  const a = new FakeParticipant('stock', 0);
  const b = new FakeParticipant('stock', 1);
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
  const { loop, calls, a, b } = await twoWithACommitOut();
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
  const { loop, calls, a } = rigWithX();
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

t.test('a command read again under a sequence at or below the cursor (a new stream leader stored it there) is applied once, the cursor stays', async (t) => {
  const { loop, calls, a } = rigWithX();
  a.push(1, add('x', 3), 'g.1');
  a.push(2, add('x', 5), 'g.2');
  loop.add(a);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  calls[0]!.settle(['committed']);
  await waitFor(() => a.commits.length === 1, { deadlineMs: 5000, what: 'the first batch to be committed' });
  // The new leader holds another command under sequence 2, and a copy of g.1 under sequence 1.
  a.push(2, add('x', 7), 'n.1');
  a.push(1, add('x', 3), 'g.1');
  for (const m of a.queue) m.resequenced = true;
  a.push(3, add('x', 1), 'g.3');
  loop.wake();
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'the second commit' });
  t.same(calls[1]!.parts, [{ name: 'stock.0', cursor: 3 }], 'the cursor moves with the new message only');
  calls[1]!.settle(['committed']);
  await waitFor(() => a.commits.length === 2, { deadlineMs: 5000, what: 'the second batch to be committed' });
  t.equal(a.stock('x'), 3 + 5 + 7 + 1, 'the command read again applied once; the copy of g.1 passed');
  t.equal(a.local, 1, 'numbered from the local count, not under the sequence another command had');
  t.same(a.commits[1]!.messageIds, ['n.1', 'g.3'], 'its message id is remembered like any other');
  t.same(a.answered().filter((to) => to.endsWith('x.2')).length, 2, 'and it is answered');
});

t.test('a second copy applied while the batch holding the first is still committing is passed too (the pipelined batch looks below)', async (t) => {
  const { loop, calls, a } = rigWithX();
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

/** A command whose `k` is a BigInt (msgpackr's BigInt extension 0x42), with a reply subject: what issue 19 published. */
function bigIntCommand(seq: number): Uint8Array {
  const packr = new Packr({ useRecords: false, useBigIntExtension: true } as ConstructorParameters<typeof Packr>[0]);
  return packr.pack({ c: { k: 2n ** 70n, id: 'x', amount: 1 }, r: `${names}x.${seq}` });
}

/** Commits every batch the loop sends, as they come, until `done()`. */
async function commitAll(calls: Call[], done: () => boolean, what: string): Promise<void> {
  let settled = 0;
  await waitFor(() => {
    while (settled < calls.length) calls[settled++]!.settle(calls[settled - 1]!.parts.map(() => 'committed'));
    return done();
  }, { deadlineMs: 5000, what });
}

t.test('add 1, poison (a BigInt in k), add 3, add 4: the poison is one dead letter, every other command is applied once and answered', async (t) => {
  const { loop, calls, a } = rigWithX();
  a.push(1, add('x', 1));
  a.pushRaw(2, bigIntCommand(2));
  a.push(3, add('x', 3));
  a.push(4, add('x', 4));
  loop.add(a);
  await commitAll(calls, () => a.cursor === 4, 'the batch to be committed');
  t.equal(a.stock('x'), 8, '1 + 3 + 4');
  t.same(a.answered().sort(), [1, 3, 4].map((s) => `${names}x.${s}`), 'the clients of 1, 3 and 4 are answered');
  t.same(a.deadLetters().map((d) => [d.seq, d.reason]), [[2 * BUNDLE_MAX, 'undecodable']], 'the poison is one dead letter');
  t.equal(a.state, 'running');
  t.equal(await loop.settled(a, 1000), true, 'no batch holds the partition any more');
});

t.test('a command whose actor throws what has no text (an object without a prototype) is one dead letter; the batch around it is applied and answered', async (t) => {
  const { loop, calls, a } = rigWithX(Object.create(null));
  a.live.get('items')!.set('boom', { stock: 0, price: 1 });
  loop.add(a);
  // Twice: once on an idle partition, once on top of a batch in flight.
  a.push(1, add('x', 1));
  a.push(2, add('boom', 1));
  a.push(3, add('x', 3));
  loop.wake();
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the first commit' });
  a.push(4, add('boom', 1));
  a.push(5, add('x', 4));
  loop.wake();
  await waitFor(() => a.queue.length === 0, { deadlineMs: 5000, what: 'the second batch to be applied' });
  await commitAll(calls, () => a.cursor === 5, 'both batches to be committed');
  t.equal(a.stock('x'), 8, '1 + 3 + 4');
  t.equal(a.stock('boom'), 0, 'nothing of the throwing commands is kept');
  t.same(a.answered().sort(), [1, 2, 3, 4, 5].map((s) => `${names}x.${s}`), 'every client is answered (the poisons with an internal error)');
  t.same(a.deadLetters().map((d) => [d.seq, d.reason, d.detail]), [2, 4].map((s) => [s * BUNDLE_MAX, 'invariant', 'a thrown object with no text']));
  t.equal(await loop.settled(a, 1000), true, 'no batch holds the partition any more');
});

t.test('settled() has a deadline: a commit that never returns does not hold a partition that lets go', async (t) => {
  const { loop, calls, a } = rigWithX();
  a.push(1, add('x', 1));
  loop.add(a);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the commit' });
  loop.remove(a);
  t.equal(await loop.settled(a, 50), false, 'gives up after its deadline while the commit hangs');
  calls[0]!.settle(['committed']);
  t.equal(await loop.settled(a, 5000), true, 'and settles once the commit returns');
});

t.test('a bundle of batchInit commands (millions of keys in one batch) is refused command by command; a batchInit alone and the bundle\'s other commands apply', async (t) => {
  const { loop, calls, a } = rigWithX();
  const init = (from: number) => ({ k: 'batchInit', from, to: from + 10, stock: 5, price: 1 });
  const bundle = [{ c: init(0), r: `${names}x.b0` }, { c: add('x', 2), r: `${names}x.b1` }, { c: init(10), r: `${names}x.b2` }];
  a.pushRaw(1, encode(bundle));
  a.push(2, init(100));
  loop.add(a);
  await commitAll(calls, () => a.cursor === 2, 'the batch to be committed');
  t.same(a.deadLetters().map((d) => [d.seq, d.reason]), [[BUNDLE_MAX, 'oversized'], [BUNDLE_MAX + 2, 'oversized']], 'each batchInit of the bundle is one dead letter');
  t.equal(a.stock('x'), 2, 'the add between them applied');
  const created = (from: number) => Array.from({ length: 10 }, (_, i) => a.stock(String(from + i))).filter((s) => s === 5).length;
  t.ok(created(100) > 0, 'the batchInit alone applied (to the ids of this partition)');
  t.same([created(0), created(10)], [0, 0], 'those of the bundle did not');
  t.same(a.answered().sort(), [`${names}x.2`, `${names}x.b0`, `${names}x.b1`, `${names}x.b2`], 'every client is answered');
});

t.test('a partition\'s first take since its start is recorded before anything of it is applied; one fenced there applies nothing, the others go on', async (t) => {
  const { loop, calls } = rig();
  const events: string[] = [];
  /** A partition just started: its start is recorded (poison accounting) when it first has stream messages to take. */
  class Starting extends FakeParticipant {
    unrecorded = true;
    recording: ((ok: boolean) => void) | null = null;
    mustRecordStart = () => this.state === 'running' && this.unrecorded && this.queue.length > 0;
    recordStart = () =>
      new Promise<void>((resolve) => {
        events.push(`record ${this.partition}`);
        this.recording = (ok) => {
          this.unrecorded = false;
          if (!ok) this.fenced();
          resolve();
        };
      });
    override take(max: number): Taken {
      events.push(`take ${this.partition}`);
      return super.take(max);
    }
  }
  const [a, b] = [new Starting('stock', 0), new Starting('stock', 1)];
  for (const m of [a, b]) {
    m.live.get('items')!.set('x', { stock: 0, price: 1 });
    loop.add(m);
  }
  a.push(1, add('x', 1));
  b.push(1, add('x', 2));
  loop.wake();
  await waitFor(() => a.recording !== null && b.recording !== null, { deadlineMs: 5000, what: 'both starts being recorded' });
  t.same(events, ['record 0', 'record 1'], 'recorded together, nothing taken before');
  b.recording!(false); // a newer owner holds partition 1
  a.recording!(true);
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the commit' });
  t.same(calls[0]!.parts, [{ name: 'stock.0', cursor: 1 }], 'only the partition whose start was recorded applied');
  t.same(events, ['record 0', 'record 1', 'take 0'], 'the fenced one took nothing');
  calls[0]!.settle(['committed']);
  a.push(2, add('x', 1));
  loop.wake();
  await waitFor(() => calls.length === 2, { deadlineMs: 5000, what: 'the next commit' });
  t.equal(events.filter((e) => e === 'record 0').length, 1, 'recorded once per start');
});

/** Every reply the partition's batches stored, as [reply subject, decoded reply]. */
const repliesOf = (m: FakeParticipant) => m.owed.flatMap((e) => e.replies.map(([to, data]) => [to, new Packr({ useRecords: false }).unpack(data)]));

t.test('a bundle for several partitions of one worker, carried by one of them: each command applied to its own partition, once, in one transaction with the carrier\'s cursor', async (t) => {
  const { loop, calls } = rig();
  const [a, b] = [new FakeParticipant('stock', 0), new FakeParticipant('stock', 1)];
  for (const m of [a, b]) {
    m.live.get('items')!.set('x', { stock: 0, price: 1 });
    loop.add(m);
  }
  const bundle = [
    { c: add('x', 1), r: `${names}x.a1` },
    { c: add('x', 10), r: `${names}x.b10`, p: 1 },
    { c: add('x', 100), r: `${names}x.b100`, p: 1 },
    { c: add('x', 1000), r: `${names}x.a1000`, p: 0 },
  ];
  a.pushRaw(7, encode(bundle), 'gw.1');
  loop.wake();
  await waitFor(() => calls.length === 1, { deadlineMs: 5000, what: 'the commit' });
  t.same(calls[0]!.parts.map((p) => p.name).sort(), ['stock.0', 'stock.1'], 'the carrier and the partition it carried for, in one transaction');
  calls[0]!.settle(['committed', 'committed']);
  await waitFor(() => a.commits.length === 1 && b.commits.length === 1, { deadlineMs: 5000, what: 'both to hear of the commit' });
  t.equal(a.stock('x'), 1001, 'the carrier\'s own commands (with and without p)');
  t.equal(b.stock('x'), 110, 'the carried ones, on their partition');
  t.same([a.cursor, b.cursor], [7, 0], 'the carrier\'s cursor moved; the other partition\'s stream was not read');
  t.same([a.local, b.local], [0, 2], 'the carried commands are numbered from their partition\'s local count');
  const replies = [...repliesOf(a), ...repliesOf(b)].sort((x, y) => String(x[0]).localeCompare(String(y[0])));
  t.same(replies.map(([to]) => to), ['a1', 'a1000', 'b10', 'b100'].map((s) => `${names}x.${s}`), 'every command answered');
  t.ok(replies.every(([, r]) => (r as { ok: boolean }).ok), 'each with its outcome');
});

t.test('a command carried for a partition this worker does not run (moved, or not started): answered elsewhere, nothing changed; a partition out of range is a dead letter', async (t) => {
  const { loop, calls, a } = rigWithX();
  loop.add(a);
  a.pushRaw(3, encode([
    { c: add('x', 1), r: `${names}x.own` },
    { c: add('x', 5), r: `${names}x.away`, p: 1 },
    { c: add('x', 7), r: `${names}x.bad`, p: 2 },
    { c: add('x', 9), r: `${names}x.neg`, p: -1 },
  ]));
  loop.wake();
  await commitAll(calls, () => a.cursor === 3, 'the batch to be committed');
  t.equal(a.stock('x'), 1, 'only the carrier\'s own command applied');
  const replies = new Map(repliesOf(a) as [string, { ok: boolean; code?: string }][]);
  t.equal(replies.get(`${names}x.own`)?.ok, true);
  t.equal(replies.get(`${names}x.away`)?.code, 'elsewhere', 'the one for partition 1: elsewhere (the gateway sends it there)');
  t.equal(replies.get(`${names}x.bad`)?.code, 'invalid_command', 'partition 2 of 2: refused');
  t.equal(replies.get(`${names}x.neg`)?.code, 'invalid_command', 'partition -1: refused');
  t.same(a.deadLetters().map((d) => [d.seq, d.reason]), [[3 * BUNDLE_MAX + 2, 'invalid'], [3 * BUNDLE_MAX + 3, 'invalid']], 'the two out of range are dead letters; elsewhere is not one');
});

t.test('a command carried for a partition this worker does not run, with no reply subject: nobody would send it on, so it is a dead letter', async (t) => {
  const { loop, calls, a } = rigWithX();
  loop.add(a);
  a.pushRaw(4, encode([{ c: add('x', 1) }, { c: add('x', 5), p: 1 }]));
  loop.wake();
  await commitAll(calls, () => a.cursor === 4, 'the batch to be committed');
  t.equal(a.stock('x'), 1);
  t.same(a.deadLetters().map((d) => [d.seq, d.reason]), [[4 * BUNDLE_MAX + 1, 'invalid']], 'the carried one is a dead letter');
  t.match(a.deadLetters()[0]!.detail, /stock\.1 is not served by this worker now, and the command names no reply subject/);
});

/** An id of the kind's partition `p` of 2. */
const idIn = (p: number, prefix: string) => drawIn(p, 2, (() => { let i = 0; return () => `${prefix}${i++}`; })());

t.test('a saga that ends after a participant of this worker left the batch: its forgets wait (the courier sends them later, merged); one still in the batch is applied there', async (t) => {
  const { loop, calls } = rig();
  const order = new FakeParticipant('order', 0);
  const payment = new FakeParticipant('payment', 0);
  const user = idIn(0, 'u');
  const item = idIn(1, 'i'); // on stock partition 1, which this worker does not run
  payment.live.get('users')!.set(user, 10);
  order.live.get('orders')!.set('o1', { user, items: [[item, 1]], total: 3, paid: false });
  order.live.get('orders')!.set('o2', { user, items: [], total: 0, paid: false });
  loop.add(order);
  loop.add(payment);
  order.push(1, { k: 'checkout', id: 'o1' });
  loop.wake();
  await commitAll(calls, () => order.cursor === 1, 'the checkout');
  t.equal(payment.live.get('users')!.get(user), 7, 'the debit, on this worker, was applied with the checkout');
  const reserve = order.commits.flatMap((c) => c.sends).map((p) => p[1]);
  t.same(reserve, [1], 'the reserve left for stock partition 1');
  const saga = (order.live.get('orders')!.get('o1') as { saga: { id: string } }).saga.id;
  const paymentCommits = payment.commits.length;

  // Stock partition 1 answers from its worker: the saga ends in a batch the payment partition is not in.
  order.pushParcel([{ k: 'answer', saga, order: 'o1', part: 'stock:1', phase: 'hold', ok: true, at: 5 }]);
  loop.wake();
  await commitAll(calls, () => order.commits.length === 2, 'the answer');
  const ended = order.commits[1]!;
  t.same(ended.sends, [], 'no forget leaves at once');
  t.same(ended.later.map((o) => [o.kind, o.partition, o.cmd]).sort(), [
    ['payment', 0, { k: 'forget', sagas: [[saga, -1]] }],
    ['stock', 1, { k: 'forget', sagas: [[saga, 5]] }],
  ], 'both forgets wait: the one for the partition elsewhere, and the one for this worker\'s payment partition');
  t.equal(payment.commits.length, paymentCommits, 'the payment partition was not made part of the batch for its forget');
  t.ok(payment.live.get('ledger')!.has(saga), 'its ledger entry stays until the forget comes');

  // A saga all on this worker: the forget for a partition in the batch is applied there, and nothing waits.
  order.live.get('orders')!.set('o2', { user, items: [], total: 0, paid: false });
  order.push(2, { k: 'checkout', id: 'o2' });
  loop.wake();
  await commitAll(calls, () => order.cursor === 2, 'the local checkout');
  t.same(order.commits.at(-1)!.later, [], 'nothing waits');
  t.notOk([...payment.live.get('ledger')!.keys()].some((k) => k.startsWith('o2#')), 'its forget was applied in the batch');
});
