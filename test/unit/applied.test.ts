/**
 * What a partition remembers of what it applied (src/datapath/applied.ts): parcel ids up to a count, stream message
 * ids within the duplicate window.
 */
import t from 'tap';
import { Applied } from '../../src/datapath/applied.js';

const WINDOW_MS = 1000;

t.test('a committed parcel or message is seen; another is not', async (t) => {
  const a = new Applied(WINDOW_MS);
  a.committed(['p1'], ['m1'], 0);
  t.ok(a.parcel('p1'));
  t.ok(a.message('m1'));
  t.notOk(a.parcel('m1'), 'parcels and messages are apart');
  t.notOk(a.message('p1'));
  t.notOk(a.parcel('p2'));
});

t.test('message ids are forgotten once older than the duplicate window', async (t) => {
  const a = new Applied(WINDOW_MS);
  a.committed([], ['old'], 0);
  a.committed([], ['mid'], 600);
  a.committed([], ['new'], WINDOW_MS + 1);
  t.notOk(a.message('old'), 'outside the window');
  t.ok(a.message('mid'), 'inside the window');
  t.ok(a.message('new'));
});

t.test('parcel ids are kept up to a bound, the oldest forgotten first', async (t) => {
  const a = new Applied(WINDOW_MS);
  const ids = Array.from({ length: 9000 }, (_, i) => `p${i}`);
  a.committed(ids, [], 0);
  t.notOk(a.parcel('p0'), 'the oldest is gone');
  t.ok(a.parcel('p8999'), 'the newest stays');
  t.ok(a.parcel(`p${9000 - 8192}`), 'the last 8192 stay');
  t.notOk(a.parcel(`p${9000 - 8193}`));
});
