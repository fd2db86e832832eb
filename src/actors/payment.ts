import { fail, ok, type Reply } from '../protocol.js';
import { forget, hold, LEDGER, partOf, release, type ForgetCmd, type HoldResult, type ReleaseCmd, type SagaRef } from './saga.js';
import { ownShare } from '../partition.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export type PaymentCmd =
  | { k: 'create'; id: string }
  | { k: 'batchInit'; from: number; to: number; credit: number }
  | { k: 'addFunds'; id: string; amount: number }
  | { k: 'pay'; id: string; amount: number }
  | PaymentSagaCmd;

export type DebitCmd = SagaRef & { k: 'debit'; user: string; amount: number };
export type PaymentSagaCmd = DebitCmd | ReleaseCmd | ForgetCmd;

export type PaymentQuery = { k: 'find'; id: string };

/** Users by id; a user is its credit, a plain number (no object per user: 1M users take ~56 MB less heap). */
const USERS = 'users';

function assertCredit(credit: number): number {
  if (!Number.isSafeInteger(credit) || credit < 0) throw new Error(`invariant: credit ${credit} out of range`);
  return credit;
}

interface Debit {
  user: string;
  amount: number;
}

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
  tables: [USERS, LEDGER],

  apply(state: StateView, cmd: PaymentCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        state.set(USERS, cmd.id, 0);
        return { reply: ok({}) };
      case 'batchInit':
        for (const id of ownShare(cmd, ctx)) state.set(USERS, id, assertCredit(cmd.credit));
        return { reply: ok({}) };
      case 'addFunds': {
        const credit = state.get<number>(USERS, cmd.id);
        if (credit === undefined) return { reply: fail('not_found', `user ${cmd.id}`) };
        const next = credit + cmd.amount;
        if (!Number.isSafeInteger(next)) return { reply: fail('overflow', `user ${cmd.id}`) };
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
