import { fail, ok, type Reply } from '../protocol.js';
import type { DebitCmd, PaymentCmd } from './commands.js';
import { forget, heldBySagas, hold, LEDGER, ledgerReminders, partOf, release, type HoldResult } from './saga.js';
import { ownShare } from '../partitioning.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export type { DebitCmd, PaymentCmd };

export type PaymentQuery = { k: 'find'; id: string };

/** Users by id; a user is its credit, a plain number (no object per user: 1M users take ~56 MB less heap). */
const USERS = 'users';
const MAX = Number.MAX_SAFE_INTEGER;

function assertCredit(credit: number): number {
  if (!Number.isSafeInteger(credit) || credit < 0) throw new Error(`invariant: credit ${credit} out of range`);
  return credit;
}

interface Debit {
  user: string;
  amount: number;
}

/** Money of each user that running sagas hold and may refund. */
const heldMoney = (state: StateView) => heldBySagas<Debit>(state, ({ user, amount }) => [[user, amount]]);

/**
 * Credit `next` for a user that sagas may still refund `held` to: refused when the two could pass 2^53-1, so that a
 * refund can always be applied (invariant: credit + held is a safe integer).
 */
const overflows = (next: number, held = 0) => !Number.isSafeInteger(next) || next + held > MAX;

function debit(state: StateView, id: string, amount: number): HoldResult<Debit> {
  const credit = state.get<number>(USERS, id);
  if (credit === undefined) return { ok: false, code: 'not_found', detail: `user ${id}` };
  if (credit < amount) return { ok: false, code: 'insufficient_credit', detail: `user ${id} has ${credit}, the order costs ${amount}` };
  state.set(USERS, id, assertCredit(credit - amount));
  return { ok: true, held: { user: id, amount } };
}

function refund(state: StateView, { user: id, amount }: Debit): void {
  const credit = state.get<number>(USERS, id);
  if (credit === undefined) throw new Error(`invariant: debited user ${id} vanished`);
  state.set(USERS, id, assertCredit(credit + amount));
}

export const payment: Actor<PaymentCmd, PaymentQuery> = {
  kind: 'payment',
  reminders: ledgerReminders('payment'),
  tables: [USERS, LEDGER],

  apply(state: StateView, cmd: PaymentCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        state.set(USERS, cmd.id, 0);
        return { reply: ok({}) };
      case 'batchInit': {
        // All of the range or none of it: a user running sagas hold money of keeps it refundable.
        const held = heldMoney(state);
        const ids = [...ownShare(cmd, ctx)];
        const clash = held.size === 0 ? undefined : ids.find((id) => overflows(cmd.credit, held.get(id)));
        if (clash !== undefined) return { reply: fail('overflow', `user ${clash}: credit plus what running checkouts hold`) };
        for (const id of ids) state.set(USERS, id, assertCredit(cmd.credit));
        return { reply: ok({}) };
      }
      case 'addFunds': {
        const credit = state.get<number>(USERS, cmd.id);
        if (credit === undefined) return { reply: fail('not_found', `user ${cmd.id}`) };
        const next = credit + cmd.amount;
        if (overflows(next)) return { reply: fail('overflow', `user ${cmd.id}`) };
        const held = heldMoney(state).get(cmd.id);
        if (overflows(next, held)) return { reply: fail('overflow', `user ${cmd.id}: credit plus the ${held} running checkouts hold`) };
        state.set(USERS, cmd.id, assertCredit(next));
        return { reply: ok({ credit: next }) };
      }
      case 'pay': {
        const credit = state.get<number>(USERS, cmd.id);
        if (credit === undefined) return { reply: fail('not_found', `user ${cmd.id}`) };
        if (credit < cmd.amount) return { reply: fail('insufficient_credit', `user ${cmd.id} has ${credit}`) };
        const next = credit - cmd.amount;
        state.set(USERS, cmd.id, assertCredit(next));
        return { reply: ok({ credit: next }) };
      }
      case 'debit':
        return { send: [hold(state, cmd, partOf('payment', ctx.partition), ctx, () => debit(state, cmd.user, cmd.amount))] };
      case 'release':
        return { send: [release(state, cmd, partOf('payment', ctx.partition), ctx, (held: Debit) => refund(state, held))] };
      case 'forget':
        forget(state, cmd);
        return {};
    }
  },

  query(state: ReadView, query: PaymentQuery): Reply {
    const credit = state.get<number>(USERS, query.id);
    return credit === undefined ? fail('not_found', `user ${query.id}`) : ok({ credit });
  },
};
