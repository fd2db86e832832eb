/**
 * The poison verdict (src/datapath/poison.ts): how a start takes the message after its cursor, by the attempts at it
 * counted in Redis.
 */
import t from 'tap';
import { POISON_SOLOS_MAX, POISON_STARTS_MAX, poisonVerdict } from '../../src/datapath/poison.js';

t.test('taken as usual below the limits', async (t) => {
  t.same(poisonVerdict(41, { starts: 1, solos: 0 }), { take: 'as-usual' }, 'a first start');
  t.same(poisonVerdict(41, { starts: POISON_STARTS_MAX - 1, solos: 0 }), { take: 'as-usual' });
});

t.test('taken alone after POISON_STARTS_MAX starts at one cursor', async (t) => {
  t.same(poisonVerdict(41, { starts: POISON_STARTS_MAX, solos: 0 }), { take: 'alone', seq: 42 }, 'the message after the cursor');
  t.same(poisonVerdict(41, { starts: POISON_STARTS_MAX + 3, solos: POISON_SOLOS_MAX - 1 }), { take: 'alone', seq: 42 });
});

t.test('quarantined after POISON_SOLOS_MAX attempts alone, whatever the starts', async (t) => {
  const v = poisonVerdict(41, { starts: 3, solos: POISON_SOLOS_MAX });
  t.equal(v.take, 'quarantined');
  t.equal(v.take === 'quarantined' && v.seq, 42);
  t.equal(
    v.take === 'quarantined' && v.why,
    'stream message 42 was taken 2 times without being committed (1 of them alone): a poison message, quarantined without being decoded',
    'the dead letter says why',
  );
  t.equal(poisonVerdict(0, { starts: 1, solos: POISON_SOLOS_MAX + 1 }).take, 'quarantined');
});
