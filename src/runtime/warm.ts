import { actorOf } from '../actors/index.js';
import type { Effects, Outgoing } from '../actors/types.js';
import { encode } from '../codec.js';
import type { Kind } from '../config.js';
import { Draft } from './batch.js';

/** Checkouts run by `warmActors`: enough for V8 to optimize the saga's code. */
const WARM_CHECKOUTS = 3000;

let warmed = false;

/** `warmActors` once per process (compiled code is per process); the ms it took, or 0 when already done. */
export function warmActorsOnce(): number {
  if (warmed) return 0;
  warmed = true;
  const t = performance.now();
  warmActors();
  return Math.round(performance.now() - t);
}

/**
 * Runs the actors' commands of a checkout saga (items, users and orders made, checked out, held, answered,
 * released, forgotten) on scratch state in memory, through the batch draft and the codec, and throws it all away.
 * A worker does this once before it takes partitions, so that the first checkouts after a start or a failover run
 * optimized code instead of V8's interpreter: a cold worker answered its first second of load at about half its
 * rate and twice its latency (README, Performance). Pure: touches no Redis, no NATS, no partition. Returns how
 * many commands it applied and how the checkouts ended (every third one lacks credit and is compensated).
 */
export function warmActors(checkouts = WARM_CHECKOUTS): { commands: number; paid: number; refused: number } {
  const kinds: Kind[] = ['stock', 'payment', 'order'];
  const live = new Map(kinds.map((k) => [k, new Map(actorOf(k).tables.map((t) => [t, new Map<string, unknown>()]))]));
  let seq = 0;
  let applied = 0;
  let paid = 0;
  let refused = 0;
  for (let i = 0; i < checkouts; i++) {
    const drafts = new Map(kinds.map((k) => [k, new Draft(live.get(k)!)]));
    const apply = (kind: Kind, cmd: unknown, replyTo?: string): Effects => {
      const draft = drafts.get(kind)!;
      const effects = actorOf(kind).apply(draft, cmd as never, replyTo ? { partition: 0, partitions: 1, seq: ++seq, replyTo } : { partition: 0, partitions: 1, seq: ++seq });
      draft.keepCommand();
      applied++;
      if (effects.reply) encode(effects.reply);
      for (const { reply } of effects.replies ?? []) {
        encode(reply);
        if (reply.ok) paid++;
        else refused++;
      }
      return effects;
    };
    const [item, user, order] = [`i${i}`, `u${i}`, `o${i}`];
    apply('stock', { k: 'create', id: item, price: 2 });
    apply('stock', { k: 'add', id: item, amount: 10 });
    apply('payment', { k: 'create', id: user });
    apply('payment', { k: 'addFunds', id: user, amount: i % 3 === 0 ? 1 : 100 }); // every third checkout is refused and compensated
    apply('order', { k: 'create', id: order, user });
    apply('order', { k: 'addItem', id: order, item, quantity: 2, price: 2 });
    const queue: Outgoing[] = [...(apply('order', { k: 'checkout', id: order }, 'warm').send ?? [])];
    for (let q = 0; q < queue.length; q++) queue.push(...(apply(queue[q]!.kind, queue[q]!.cmd).send ?? []));
    for (const draft of drafts.values()) {
      for (const changes of draft.batch.values()) for (const value of changes.values()) if (value !== undefined) encode(value);
      draft.publish();
    }
  }
  return { commands: applied, paid, refused };
}
