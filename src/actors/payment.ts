import { fail, ok, type Reply } from '../protocol.js';
import { ownShare } from '../partition.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export interface User {
  credit: number;
}

export type PaymentCmd =
  | { k: 'create'; id: string }
  | { k: 'batchInit'; n: number; credit: number }
  | { k: 'addFunds'; id: string; amount: number }
  | { k: 'pay'; id: string; amount: number };

export type PaymentQuery = { k: 'find'; id: string };

const USERS = 'users';

function assertUser(user: User): User {
  if (!Number.isSafeInteger(user.credit) || user.credit < 0) throw new Error(`invariant: credit ${user.credit} out of range`);
  return user;
}

export const payment: Actor<PaymentCmd, PaymentQuery> = {
  kind: 'payment',
  tables: [USERS],

  apply(state: StateView, cmd: PaymentCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        state.set(USERS, cmd.id, { credit: 0 });
        return { reply: ok({}) };
      case 'batchInit':
        for (const id of ownShare(cmd.n, ctx)) state.set(USERS, id, assertUser({ credit: cmd.credit }));
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
    }
  },

  query(state: ReadView, query: PaymentQuery): Reply {
    const user = state.get<User>(USERS, query.id);
    return user ? ok({ credit: user.credit }) : fail('not_found', `user ${query.id}`);
  },
};
