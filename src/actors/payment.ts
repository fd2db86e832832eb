import { fail, ok, type Reply } from '../protocol.js';
import { forget, hold, LEDGER, partOf, release, type ForgetCmd, type HoldResult, type ReleaseCmd, type SagaRef } from './saga.js';
import { ownShare } from '../partition.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export interface User {
  credit: number;
}

export type PaymentCmd =
  | { k: 'create'; id: string }
  | { k: 'batchInit'; from: number; to: number; credit: number }
  | { k: 'addFunds'; id: string; amount: number }
  | { k: 'pay'; id: string; amount: number }
  | PaymentSagaCmd;

export type DebitCmd = SagaRef & { k: 'debit'; user: string; amount: number };
export type PaymentSagaCmd = DebitCmd | ReleaseCmd | ForgetCmd;

export type PaymentQuery = { k: 'find'; id: string };

const USERS = 'users';

function assertUser(user: User): User {
  if (!Number.isSafeInteger(user.credit) || user.credit < 0) throw new Error(`invariant: credit ${user.credit} out of range`);
  return user;
}

interface Debit {
  user: string;
  amount: number;
}

function debit(state: StateView, id: string, amount: number): HoldResult<Debit> {
  const user = state.get<User>(USERS, id);
  if (!user) return { ok: false, code: 'not_found', detail: `user ${id}` };
  if (user.credit < amount) return { ok: false, code: 'insufficient_credit', detail: `user ${id} has ${user.credit}, the order costs ${amount}` };
  state.set(USERS, id, assertUser({ credit: user.credit - amount }));
  return { ok: true, held: { user: id, amount } };
}

function refund(state: StateView, { user: id, amount }: Debit): void {
  const user = state.get<User>(USERS, id);
  if (!user) throw new Error(`invariant: debited user ${id} vanished`);
  state.set(USERS, id, assertUser({ credit: user.credit + amount }));
}

export const payment: Actor<PaymentCmd, PaymentQuery> = {
  kind: 'payment',
  tables: [USERS, LEDGER],

  apply(state: StateView, cmd: PaymentCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        state.set(USERS, cmd.id, { credit: 0 });
        return { reply: ok({}) };
      case 'batchInit':
        for (const id of ownShare(cmd, ctx)) state.set(USERS, id, assertUser({ credit: cmd.credit }));
        return { reply: ok({}) };
      case 'addFunds': {
        const user = state.get<User>(USERS, cmd.id);
        if (!user) return { reply: fail('not_found', `user ${cmd.id}`) };
        const next = user.credit + cmd.amount;
        if (!Number.isSafeInteger(next)) return { reply: fail('overflow', `user ${cmd.id}`) };
        state.set(USERS, cmd.id, assertUser({ credit: next }));
        return { reply: ok({ credit: next }) };
      }
      case 'pay': {
        const user = state.get<User>(USERS, cmd.id);
        if (!user) return { reply: fail('not_found', `user ${cmd.id}`) };
        if (user.credit < cmd.amount) return { reply: fail('insufficient_credit', `user ${cmd.id} has ${user.credit}`) };
        const next = user.credit - cmd.amount;
        state.set(USERS, cmd.id, assertUser({ credit: next }));
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
    const user = state.get<User>(USERS, query.id);
    return user ? ok({ credit: user.credit }) : fail('not_found', `user ${query.id}`);
  },
};
