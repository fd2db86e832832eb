/**
 * Commands a new stream leader stored under sequences a partition read past (src/datapath/resequence.ts), against a
 * leader given as a map of sequence to message. The reader that uses them, with a real nats-server:
 * test/integration/command-reader.test.ts.
 */
import type { StoredMsg } from 'nats';
import t from 'tap';
import { divergedAfter, RecentReads, RECENT_READS_MAX, Rereads, unread, type LeaderGet } from '../../src/datapath/resequence.js';
import { waitFor } from '../helpers/servers.js';

const MINE = 'shop.order.cmd.3';
const msg = (seq: number, id: string | undefined, subject = MINE) => ({ seq, subject, data: new Uint8Array(), header: { get: (h: string) => (h === 'Nats-Msg-Id' && id ? id : '') } }) as unknown as StoredMsg;

/** A leader holding `held`; each get is counted. */
function leader(held: StoredMsg[]): { get: LeaderGet; gets: () => number } {
  let gets = 0;
  const bySeq = new Map(held.map((m) => [m.seq, m]));
  const get: LeaderGet = async (seq, next) => {
    gets++;
    if (!next) return bySeq.get(seq);
    return held.filter((m) => m.subject === MINE && m.seq >= seq).sort((a, b) => a.seq - b.seq)[0];
  };
  return { get, gets: () => gets };
}

const read = (...pairs: [number, string][]) => pairs.map(([seq, id]) => ({ seq, id }));

t.test('divergedAfter: one get when the leader holds the newest read alike', async (t) => {
  const l = leader([msg(3, 'a'), msg(5, 'b'), msg(8, 'c')]);
  t.equal(await divergedAfter(l.get, MINE, read([3, 'a'], [5, 'b'], [8, 'c'])), undefined);
  t.equal(l.gets(), 1);
  t.equal(await divergedAfter(l.get, MINE, []), undefined, 'nothing read: nothing to compare');
});

t.test('divergedAfter: the newest read the leader holds alike (same sequence, subject and id), else before the oldest', async (t) => {
  const l = leader([msg(3, 'a'), msg(5, 'b'), msg(8, 'x'), msg(9, 'c', 'shop.order.cmd.4')]);
  t.equal(await divergedAfter(l.get, MINE, read([3, 'a'], [5, 'b'], [8, 'c'])), 5, 'another id under 8');
  t.equal(await divergedAfter(l.get, MINE, read([3, 'a'], [5, 'b'], [9, 'c'])), 5, 'the id under 9, on another partition\'s subject');
  t.equal(await divergedAfter(l.get, MINE, read([3, 'a'], [5, 'b'], [10, 'c'])), 5, 'nothing under 10');
  t.equal(await divergedAfter(l.get, MINE, read([8, 'c'], [10, 'd'])), 7, 'none alike: from before the oldest');
});

t.test('divergedAfter asks nothing about reads the partition trimmed (no leader holds them)', async (t) => {
  const l = leader([msg(8, 'x')]);
  t.equal(await divergedAfter(l.get, MINE, read([3, 'a'], [5, 'b'], [8, 'c']), 5), 7, 'only 8 compared: from before it');
  t.equal(l.gets(), 1);
  t.equal(await divergedAfter(l.get, MINE, read([3, 'a'], [5, 'b']), 5), undefined, 'every read trimmed: nothing to compare');
});

t.test('unread: the partition\'s messages after `from` up to the cursor with an id not read; none without an id', async (t) => {
  const l = leader([msg(5, 'b'), msg(6, 'n1'), msg(7, 'other', 'shop.order.cmd.4'), msg(8, 'c'), msg(9, undefined), msg(10, 'n2'), msg(12, 'after')]);
  const { found, last, past } = await unread(l.get, 5, 11, new Set(['b', 'c']));
  t.same(found.map((m) => m.seq), [6, 10], 'n1 and n2: c was read (under another sequence), 9 has no id, 12 is past the cursor');
  t.same([last, past], [10, true], 'looked up to 10, and the leader holds the partition\'s 12 past the cursor');
  t.same(await unread(l.get, 10, 15, new Set()), { found: [msg(12, 'after')], last: 12, past: false }, 'nothing past the cursor 15 yet: looked again later');
});

t.test('RecentReads keeps the last RECENT_READS_MAX reads with an id', async (t) => {
  const r = new RecentReads();
  const headers = (id: string) => ({ get: (h: string) => (h === 'Nats-Msg-Id' ? id : '') }) as never;
  r.add(1, undefined);
  for (let seq = 2; seq < 2 + 3 * RECENT_READS_MAX; seq++) r.add(seq, headers(`m${seq}`));
  t.equal(r.list.length, RECENT_READS_MAX);
  t.equal(r.list.at(-1)!.seq, 1 + 3 * RECENT_READS_MAX, 'the newest last');
  t.ok(r.ids.has(`m${1 + 3 * RECENT_READS_MAX}`) && !r.ids.has('m2'), 'the oldest forgotten');
  r.clear();
  t.same(r.list, []);
});

t.test('Rereads.look compares the reads of when it began: a stream without a leader answers after the reader read on from the new one', async (t) => {
  const hdr = (id: string) => ({ get: (h: string) => (h === 'Nats-Msg-Id' ? id : '') }) as never;
  // The new leader lacks c under 8, holds two new commands under 6 and 8, and the reader's next read, z, under 10.
  const l = leader([msg(3, 'a'), msg(5, 'b'), msg(6, 'n1'), msg(8, 'x'), msg(10, 'z')]);
  let leaderless = true;
  const get: LeaderGet = async (seq, next) => {
    if (leaderless) throw new Error('no leader');
    return l.get(seq, next);
  };
  const queued: number[][] = [];
  const rereads = new Rereads({ get, subject: MINE, active: () => true, queue: (found) => queued.push(found.map((m) => m.seq)) });
  for (const [seq, id] of [[3, 'a'], [5, 'b'], [8, 'c']] as const) rereads.read(seq, hdr(id));
  rereads.look(8); // the consumer replaced while the stream has no leader
  rereads.read(10, hdr('z')); // the reader reads on from the new leader before the look gets an answer
  leaderless = false;
  await waitFor(() => queued.length > 0, { deadlineMs: 5000, what: 'the look to queue what the new leader holds under 6 and 8' });
  t.same(queued, [[6, 8]], 'n1 and x, the commands the new leader holds under sequences read past');
});
