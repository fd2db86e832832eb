/** The probation's pure check (src/datapath/probation.ts): a delivery next to what the stream's leader holds. */
import t from 'tap';
import { delivery } from '../../src/datapath/probation.js';

t.test('delivery: the next message, the leader\'s first, or one the leader does not hold there', async (t) => {
  const m = (seq: number, text: string) => ({ seq, data: new TextEncoder().encode(text) });
  t.equal(delivery(m(7, 'a'), m(7, 'a')), 'next');
  t.equal(delivery(m(9, 'c'), m(7, 'a')), 'leader-first', 'the leader holds 7 before the 9 delivered');
  t.equal(delivery(m(7, 'b'), m(7, 'a')), 'leader-first', 'the leader holds other bytes under 7');
  t.equal(delivery(m(7, 'a'), m(9, 'c')), 'not-held', 'the leader holds 9 next, not the 7 delivered');
  t.equal(delivery(m(7, 'a'), undefined), 'not-held', 'the leader holds nothing after the cursor');
});
