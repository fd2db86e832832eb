/**
 * The command reader against a consumer that skips (src/datapath/command-reader.ts, CONSUMER_PROBATION_MS): the NATS
 * fault tests saw a consumer made on a replica that was behind skip a command the stream's leader had stored and
 * acknowledged, and deliver the ones after it. A real nats-server holds the stream; the consumers are fakes that
 * deliver what the test says (the first skips one command, or delivers one the stream does not hold), and the
 * reader must queue every command of its partition, once, in stream order, and nothing else. The pure check:
 * test/unit/probation.test.ts.
 */
import { connect, type ConsumerMessages, type NatsConnection } from 'nats';
import t, { type Test } from 'tap';
import { CommandReader } from '../../src/datapath/command-reader.js';
import { createLog } from '../../src/log.js';
import { startNats, waitFor } from '../helpers/servers.js';

const quiet = createLog('test', 'error');
const STREAM = 'READER';
const SUBJECT = 'reader.cmd.0';

interface Delivered {
  seq: number;
  data: Uint8Array;
}

/** A consumer that delivers `list` and then waits, as an idle one does, until it is stopped. */
function fakeConsumer(list: Delivered[]): ConsumerMessages {
  let stop: () => void = () => {};
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const messages = {
    async *[Symbol.asyncIterator]() {
      for (const m of list) yield { seq: m.seq, data: m.data, headers: undefined, info: { pending: 0 } };
      await stopped;
    },
    stop,
    status: async () => ({ async *[Symbol.asyncIterator]() { await stopped; } }),
  };
  return messages as unknown as ConsumerMessages;
}

/** The stream's messages on `subject` from `from` on, as the leader holds them. */
async function stored(nc: NatsConnection, subject: string, from: number): Promise<Delivered[]> {
  const jsm = await nc.jetstreamManager();
  const out: Delivered[] = [];
  for (let seq = from; ; ) {
    const m = await jsm.streams.getMessage(STREAM, { seq, next_by_subj: subject } as unknown as { seq: number }).catch(() => undefined);
    if (!m) return out;
    out.push({ seq: m.seq, data: m.data });
    seq = m.seq + 1;
  }
}

async function setUp(t: Test) {
  const nats = await startNats(t);
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const jsm = await nc.jetstreamManager();
  await jsm.streams.add({ name: STREAM, subjects: ['reader.cmd.*'] });
  const js = nc.jetstream();
  // The partition's commands interleaved with another partition's, as on a kind's stream.
  for (let i = 0; i < 20; i++) {
    await js.publish(SUBJECT, new TextEncoder().encode(`mine ${i}`));
    await js.publish('reader.cmd.1', new TextEncoder().encode(`other ${i}`));
  }
  return { nc, jsm, all: await stored(nc, SUBJECT, 1) };
}

function reader(nc: NatsConnection, jsm: Awaited<ReturnType<NatsConnection['jetstreamManager']>>, consume: (from: number) => Promise<ConsumerMessages>) {
  return new CommandReader({ nc, jsm, config: { queueMax: 1000, batchMax: 100, retryBackoffMs: 10 }, log: quiet, stream: STREAM, subject: SUBJECT, active: () => true, wake: () => {}, consume });
}

t.test('a new consumer that skips a command: the reader queues it from the leader, and every other once, in order', async (t) => {
  const { nc, jsm, all } = await setUp(t);
  const skipped = all[5]!.seq;
  const made: number[] = [];
  const r = reader(nc, jsm, async (from) => {
    made.push(from);
    const rest = all.filter((m) => m.seq >= from);
    // The first consumer passes one command; those made after it deliver what the stream holds.
    return fakeConsumer(made.length === 1 ? rest.filter((m) => m.seq !== skipped) : rest);
  });
  t.teardown(() => r.stop());
  await r.open(0);
  await waitFor(async () => r.queued >= all.length, { deadlineMs: 10_000, what: `the reader to queue all ${all.length} commands` }).catch(() => {});
  const queued = r.take(1000).map((m) => m.seq);
  t.same(queued, all.map((m) => m.seq), `every command queued once, in stream order (${skipped} included)`);
  t.ok(made.length >= 2, 'the consumer that skipped was replaced');
});

t.test('a new consumer that delivers a command the stream does not hold: it is not queued', async (t) => {
  const { nc, jsm, all } = await setUp(t);
  const made: number[] = [];
  const stranger = { seq: all[3]!.seq + 1, data: new TextEncoder().encode('not in the stream for this partition') };
  const r = reader(nc, jsm, async (from) => {
    made.push(from);
    const rest = all.filter((m) => m.seq >= from);
    return fakeConsumer(made.length === 1 ? [...rest.slice(0, 4), stranger, ...rest.slice(4)] : rest);
  });
  t.teardown(() => r.stop());
  await r.open(0);
  await waitFor(async () => r.queued >= all.length, { deadlineMs: 10_000, what: `the reader to queue all ${all.length} commands` }).catch(() => {});
  const queued = r.take(1000);
  t.same(queued.map((m) => m.seq), all.map((m) => m.seq), 'the stream\'s commands, in order, and not the stranger');
  t.notOk(queued.some((m) => new TextDecoder().decode(m.data) === 'not in the stream for this partition'), 'the stranger\'s bytes were not queued');
});

t.test('a new consumer whose replica holds other bytes under a sequence: the leader\'s command is queued', async (t) => {
  const { nc, jsm, all } = await setUp(t);
  const made: number[] = [];
  const shifted = { seq: all[6]!.seq, data: new TextEncoder().encode('another command under the leader\'s sequence') };
  const r = reader(nc, jsm, async (from) => {
    made.push(from);
    const rest = all.filter((m) => m.seq >= from);
    return fakeConsumer(made.length === 1 ? rest.map((m) => (m.seq === shifted.seq ? shifted : m)) : rest);
  });
  t.teardown(() => r.stop());
  await r.open(0);
  await waitFor(async () => r.queued >= all.length, { deadlineMs: 10_000, what: `the reader to queue all ${all.length} commands` }).catch(() => {});
  const queued = r.take(1000);
  t.same(queued.map((m) => new TextDecoder().decode(m.data)), all.map((m) => new TextDecoder().decode(m.data)), 'the stream\'s commands as its leader holds them, in order');
});

t.test('a new stream leader that lacks the last commands read stores others under their sequences: the reader queues those, once', async (t) => {
  const nats = await startNats(t);
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const jsm = await nc.jetstreamManager();
  const js = nc.jetstream();
  const text = new TextEncoder();
  // The old leader's history: ten commands of the partition (ids old-0..9) among another partition's.
  const history = async (mine: string[], more = 0) => {
    await jsm.streams.delete(STREAM).catch(() => false);
    await jsm.streams.add({ name: STREAM, subjects: ['reader.cmd.*'] });
    for (const id of mine) {
      await js.publish(SUBJECT, text.encode(id), { msgID: id });
      await js.publish('reader.cmd.1', text.encode(`other ${id}`), { msgID: `other-${id}` });
    }
    for (let i = 0; i < more; i++) await js.publish('reader.cmd.1', text.encode(`later ${i}`));
  };
  const old = Array.from({ length: 10 }, (_, i) => `old-${i}`);
  await history(old);
  const r = new CommandReader({ nc, jsm, config: { queueMax: 1000, batchMax: 100, retryBackoffMs: 10 }, log: quiet, stream: STREAM, subject: SUBJECT, active: () => true, wake: () => {} });
  t.teardown(() => r.stop());
  await r.open(0);
  await waitFor(async () => r.queued >= old.length, { deadlineMs: 10_000, what: 'the reader to queue the old leader\'s commands' });
  const read = r.take(1000);
  const cursor = read.at(-1)!.seq;
  // The new leader holds the first six alike, lacks old-6..9, and stores four new commands under their sequences.
  const fresh = ['new-0', 'new-1', 'new-2', 'new-3'];
  await history([...old.slice(0, 6), ...fresh], 4);
  r.replace('has a new stream leader (test)');
  await waitFor(async () => r.queued >= fresh.length, { deadlineMs: 10_000, what: 'the reader to queue the new leader\'s commands under sequences it read past' }).catch(() => {});
  const again = r.take(1000);
  t.same(again.map((m) => new TextDecoder().decode(m.data)), fresh, 'the four new commands, in order, and none read before');
  t.ok(again.every((m) => m.seq <= cursor && m.resequenced === true), 'each under a sequence at or below the cursor, marked as read again');
  await js.publish(SUBJECT, text.encode('next'), { msgID: 'next' });
  await waitFor(async () => r.queued >= 1, { deadlineMs: 10_000, what: 'the reader to read on after the cursor' });
  t.same(r.take(1000).map((m) => [new TextDecoder().decode(m.data), m.resequenced]), [['next', undefined]], 'and reads on from the cursor as before');
});
