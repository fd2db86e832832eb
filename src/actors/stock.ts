import { ownShare } from '../partition.js';
import { fail, ok, type Reply } from '../protocol.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export interface Item {
  stock: number;
  price: number;
}

export type StockCmd =
  | { k: 'create'; id: string; price: number }
  | { k: 'batchInit'; n: number; stock: number; price: number }
  | { k: 'add'; id: string; amount: number }
  | { k: 'subtract'; id: string; amount: number };

export type StockQuery = { k: 'find'; id: string };

const ITEMS = 'items';

function assertItem(item: Item): Item {
  if (!Number.isSafeInteger(item.stock) || item.stock < 0) throw new Error(`invariant: stock ${item.stock} out of range`);
  return item;
}

export const stock: Actor<StockCmd, StockQuery> = {
  kind: 'stock',
  tables: [ITEMS],

  apply(state: StateView, cmd: StockCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        state.set(ITEMS, cmd.id, assertItem({ stock: 0, price: cmd.price }));
        return { reply: ok({}) };
      case 'batchInit':
        for (const id of ownShare(cmd.n, ctx)) state.set(ITEMS, id, assertItem({ stock: cmd.stock, price: cmd.price }));
        return { reply: ok({}) };
      case 'add': {
        const item = state.get<Item>(ITEMS, cmd.id);
        if (!item) return { reply: fail('not_found', `item ${cmd.id}`) };
        const next = item.stock + cmd.amount;
        if (!Number.isSafeInteger(next)) return { reply: fail('overflow', `item ${cmd.id}`) };
        state.set(ITEMS, cmd.id, assertItem({ ...item, stock: next }));
        return { reply: ok({ stock: next }) };
      }
      case 'subtract': {
        const item = state.get<Item>(ITEMS, cmd.id);
        if (!item) return { reply: fail('not_found', `item ${cmd.id}`) };
        if (item.stock < cmd.amount) return { reply: fail('insufficient_stock', `item ${cmd.id} has ${item.stock}`) };
        const next = item.stock - cmd.amount;
        state.set(ITEMS, cmd.id, assertItem({ ...item, stock: next }));
        return { reply: ok({ stock: next }) };
      }
    }
  },

  query(state: ReadView, query: StockQuery): Reply {
    const item = state.get<Item>(ITEMS, query.id);
    return item ? ok({ stock: item.stock, price: item.price }) : fail('not_found', `item ${query.id}`);
  },
};
