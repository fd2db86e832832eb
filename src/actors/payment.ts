import { fail, ok, type Reply } from '../protocol.js';
import type { DebitCmd, PaymentCmd } from './commands.js';
import { forget, hold, LEDGER, partOf, release, type HoldResult } from './saga.js';
import { ownShare } from '../partition.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export type { DebitCmd, PaymentCmd };

export type PaymentQuery = { k: 'find'; id: string };

/**
 * Users by id. A user is its credit, a plain number (no object per user: 1M users take ~56 MB less heap), or,
 * while running checkouts hold some of its money, `[credit, held]`.
 */
const USERS = 'users';
type StoredUser = number | [credit: number, held: number];
interface User {
  credit: number;
  /** Money debited by sagas still running: what a release may give back. */
  held: number;
}

const MAX = Number.MAX_SAFE_INTEGER;

function readUser(state: ReadView, id: string): User | undefined {
  const stored = state.get<StoredUser>(USERS, id);
  if (stored === undefined) return undefined;
  return typeof stored === 'number' ? { credit: stored, held: 0 } : { credit: stored[0], held: stored[1] };
}

/**
 * Credit is a safe integer >= 0, and so is credit + held: every refund can always be paid back. Top-ups (addFunds,
 * batchInit) keep the second bound; a violation here is a bug, so it throws.
 */
function writeUser(state: StateView, id: string, { credit, held }: User): void {
  if (!Number.isSafeInteger(credit) || credit < 0) throw new Error(`invariant: credit ${credit} out of range`);
  if (!Number.isSafeInteger(held) || held < 0 || credit + held > MAX) throw new Error(`invariant: credit ${credit} + held ${held} out of range`);
  state.set(USERS, id, held === 0 ? credit : ([credit, held] satisfies StoredUser));
}

/** Credit `next` for a user that sagas may still refund `held` to: refused when the two could pass 2^53-1. */
const overflows = (next: number, held: number) => !Number.isSafeInteger(next) || next + held > MAX;

interface Debit {
  user: string;
  amount: number;
}

function debit(state: StateView, id: string, amount: number): HoldResult<Debit> {
  const user = readUser(state, id);
  if (user === undefined) return { ok: false, code: 'not_found', detail: `user ${id}` };
  if (user.credit < amount) return { ok: false, code: 'insufficient_credit', detail: `user ${id} has ${user.credit}, the order costs ${amount}` };
  writeUser(state, id, { credit: user.credit - amount, held: user.held + amount });
  return { ok: true, held: { user: id, amount } };
}

/** A release: the held money returns to the credit. */
function refund(state: StateView, { user: id, amount }: Debit): void {
  const user = readUser(state, id);
  if (user === undefined) throw new Error(`invariant: debited user ${id} vanished`);
  writeUser(state, id, { credit: user.credit + amount, held: user.held - amount });
}

/** A forget of a successful debit: the money is spent for good, no longer refundable. */
function settle(state: StateView, { user: id, amount }: Debit): void {
  const user = readUser(state, id);
  if (user === undefined) throw new Error(`invariant: debited user ${id} vanished`);
  writeUser(state, id, { credit: user.credit, held: user.held - amount });
}

export const payment: Actor<PaymentCmd, PaymentQuery> = {
  kind: 'payment',
  tables: [USERS, LEDGER],

  apply(state: StateView, cmd: PaymentCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        writeUser(state, cmd.id, { credit: 0, held: readUser(state, cmd.id)?.held ?? 0 });
        return { reply: ok({}) };
      case 'batchInit': {
        // All of the range or none of it: a user some saga still holds money of keeps it refundable.
        const ids = [...ownShare(cmd, ctx)];
        const clash = ids.find((id) => overflows(cmd.credit, readUser(state, id)?.held ?? 0));
        if (clash !== undefined) return { reply: fail('overflow', `user ${clash}: credit plus what running checkouts hold`) };
        for (const id of ids) writeUser(state, id, { credit: cmd.credit, held: readUser(state, id)?.held ?? 0 });
        return { reply: ok({}) };
      }
      case 'addFunds': {
        const user = readUser(state, cmd.id);
        if (!user) return { reply: fail('not_found', `user ${cmd.id}`) };
        const next = user.credit + cmd.amount;
        if (overflows(next, user.held)) return { reply: fail('overflow', `user ${cmd.id}${user.held ? `: credit plus the ${user.held} running checkouts hold` : ''}`) };
        writeUser(state, cmd.id, { ...user, credit: next });
        return { reply: ok({ credit: next }) };
      }
      case 'pay': {
        const user = readUser(state, cmd.id);
        if (!user) return { reply: fail('not_found', `user ${cmd.id}`) };
        if (user.credit < cmd.amount) return { reply: fail('insufficient_credit', `user ${cmd.id} has ${user.credit}`) };
        const next = user.credit - cmd.amount;
        writeUser(state, cmd.id, { ...user, credit: next });
        return { reply: ok({ credit: next }) };
      }
      case 'debit':
        return { send: [hold(state, cmd, partOf('payment', ctx.partition), ctx, () => debit(state, cmd.user, cmd.amount))] };
      case 'release':
        return { send: [release(state, cmd, partOf('payment', ctx.partition), ctx, (held: Debit) => refund(state, held))] };
      case 'forget':
        forget(state, cmd, (held: Debit) => settle(state, held));
        return {};
    }
  },

  query(state: ReadView, query: PaymentQuery): Reply {
    const user = readUser(state, query.id);
    return user === undefined ? fail('not_found', `user ${query.id}`) : ok({ credit: user.credit });
  },
};
