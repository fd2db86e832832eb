import { ownShare } from '../partition.js';
import { fail, ok, type Reply } from '../protocol.js';
import { forget, hold, LEDGER, partOf, release, type ForgetCmd, type HoldResult, type ReleaseCmd, type SagaRef } from './saga.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export interface Item {
  stock: number;
  price: number;
}

export type StockCmd =
  | { k: 'create'; id: string; price: number }
  | { k: 'batchInit'; from: number; to: number; stock: number; price: number }
  | { k: 'add'; id: string; amount: number }
  | { k: 'subtract'; id: string; amount: number }
  | StockSagaCmd;

export type ReserveCmd = SagaRef & { k: 'reserve'; lines: [item: string, quantity: number][] };
export type StockSagaCmd = ReserveCmd | ReleaseCmd | ForgetCmd;

export type StockQuery = { k: 'find'; id: string };

const ITEMS = 'items';

function assertItem(item: Item): Item {
  if (!Number.isSafeInteger(item.stock) || item.stock < 0) throw new Error(`invariant: stock ${item.stock} out of range`);
  return item;
}

/** All lines of one partition, or none: every line is checked before any stock is taken. */
function reserve(state: StateView, lines: ReserveCmd['lines']): HoldResult<ReserveCmd['lines']> {
  for (const [id, quantity] of lines) {
    const item = state.get<Item>(ITEMS, id);
    if (!item) return { ok: false, code: 'not_found', detail: `item ${id}` };
    if (item.stock < quantity) return { ok: false, code: 'insufficient_stock', detail: `item ${id} has ${item.stock}, the order needs ${quantity}` };
  }
  for (const [id, quantity] of lines) {
    const item = state.get<Item>(ITEMS, id)!;
    state.set(ITEMS, id, assertItem({ ...item, stock: item.stock - quantity }));
  }
  return { ok: true, held: lines };
}

function giveBack(state: StateView, lines: ReserveCmd['lines']): void {
  for (const [id, quantity] of lines) {
    const item = state.get<Item>(ITEMS, id);
    if (!item) throw new Error(`invariant: reserved item ${id} vanished`);
    state.set(ITEMS, id, assertItem({ ...item, stock: item.stock + quantity }));
  }
}

export const stock: Actor<StockCmd, StockQuery> = {
  kind: 'stock',
  tables: [ITEMS, LEDGER],

  apply(state: StateView, cmd: StockCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        state.set(ITEMS, cmd.id, assertItem({ stock: 0, price: cmd.price }));
        return { reply: ok({}) };
      case 'batchInit':
        for (const id of ownShare(cmd, ctx)) state.set(ITEMS, id, assertItem({ stock: cmd.stock, price: cmd.price }));
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
      case 'reserve':
        return { send: [hold(state, cmd, partOf('stock', ctx.partition), ctx, () => reserve(state, cmd.lines))] };
      case 'release':
        return { send: [release(state, cmd, partOf('stock', ctx.partition), ctx, (lines: ReserveCmd['lines']) => giveBack(state, lines))] };
      case 'forget':
        forget(state, cmd);
        return {};
    }
  },

  query(state: ReadView, query: StockQuery): Reply {
    const item = state.get<Item>(ITEMS, query.id);
    return item ? ok({ stock: item.stock, price: item.price }) : fail('not_found', `item ${query.id}`);
  },
};
