/**
 * The stream marks (src/datapath/marks.ts): the start check of a partition, and the marks' payload (only workers may
 * publish them, but nothing from the bus is trusted). Their record in Redis is test/integration/marks.test.ts.
 */
import t from 'tap';
import { checkStream, decodeMark, encodeMark } from '../../src/datapath/marks.js';

const base = { stream: 'STOCK', lastSeq: 100, mark: { seq: 90, upTo: 80 }, cursor: 85, recordedMark: 90 };

t.test('a partition starts when the stream and Redis hold together everything it applied', async (t) => {
  t.same(checkStream(base), { ok: true }, 'Redis past the newest mark, the stream past the cursor');
  t.same(checkStream({ ...base, cursor: 80 }), { ok: true }, 'Redis exactly at the mark: everything after it is in the stream');
  t.same(checkStream({ ...base, mark: undefined, recordedMark: 0, cursor: 0 }), { ok: true }, 'a new partition on a new stream');
  t.same(checkStream({ ...base, mark: { seq: 95, upTo: 82 }, recordedMark: 90 }), { ok: true }, 'a newer mark than Redis recorded (its record was lost, or is about to be written)');
  t.same(checkStream({ ...base, mark: { seq: 90, upTo: 80 }, recordedMark: 0 }), { ok: true }, 'Redis without a record (a partition from before marks, or the record lost) and at or past the mark');
});

t.test('it refuses when either lost what the other no longer has, and says which', async (t) => {
  t.match(checkStream({ ...base, lastSeq: 84 }), { ok: false, why: 'stream-behind', error: /last sequence is 84, below this partition's committed cursor 85/ });
  t.match(checkStream({ ...base, mark: undefined }), { ok: false, why: 'stream-anew', error: /made anew .*trim mark is gone, Redis recorded one at 90/ });
  t.match(checkStream({ ...base, mark: { seq: 60, upTo: 50 } }), { ok: false, why: 'stream-anew', error: /trim mark is at 60, Redis recorded one at 90/ }, 'an older mark than Redis recorded: the stream was rolled back');
  t.match(checkStream({ ...base, cursor: 79 }), { ok: false, why: 'redis-behind', error: /Redis holds this partition at cursor 79, but its commands up to 80 were committed and then trimmed/ });
  t.match(checkStream({ ...base, cursor: 79, recordedMark: 0 }), { ok: false, why: 'redis-behind' }, 'also when Redis lost its record of the mark with the commits');
  for (const why of ['stream-behind', 'stream-anew', 'redis-behind'] as const) {
    const cases = { 'stream-behind': { lastSeq: 84 }, 'stream-anew': { mark: undefined }, 'redis-behind': { cursor: 79 } };
    const verdict = checkStream({ ...base, ...cases[why] });
    t.match(verdict, { error: /docs\/operations\.md, "A partition refuses its stream"/ }, `${why}: the message says where the recovery is`);
  }
});

t.test("a mark's payload: the cursor in decimal, anything else is no mark", async (t) => {
  for (const upTo of [0, 1, 123_456, Number.MAX_SAFE_INTEGER]) t.equal(decodeMark(encodeMark(upTo)), upTo, `${upTo} round-trips`);
  const bytes = (s: string) => new TextEncoder().encode(s);
  for (const bad of ['', '-1', '1.5', '1e3', ' 1', 'x', '99999999999999999', '1'.repeat(17)]) t.equal(decodeMark(bytes(bad)), undefined, `${JSON.stringify(bad)} is not a mark`);
  t.equal(decodeMark(new Uint8Array([0xc0])), undefined, 'nor are msgpack bytes');
});
