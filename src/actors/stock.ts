import { ownShare } from '../partitioning.js';
import { fail, ok, type Reply } from '../protocol.js';
import type { ReserveCmd, StockCmd } from './commands.js';
import { forget, heldBySagas, hold, LEDGER, ledgerReminders, partOf, release, type HoldResult } from './saga.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export type { ReserveCmd, StockCmd };

export interface Item {
  stock: number;
  price: number;
}

export type StockQuery = { k: 'find'; id: string };

const ITEMS = 'items';
const MAX = Number.MAX_SAFE_INTEGER;

function assertItem(item: Item): Item {
  if (!Number.isSafeInteger(item.stock) || item.stock < 0) throw new Error(`invariant: stock ${item.stock} out of range`);
  return item;
}

/** Units of each item that running sagas hold and may give back. */
const heldUnits = (state: StateView) => heldBySagas<ReserveCmd['lines']>(state, (lines) => lines);

/**
 * Stock `next` for an item that sagas may still give `held` units back to: refused when the two could pass
 * 2^53-1, so that a release can always be applied (invariant: stock + held is a safe integer).
 */
const overflows = (next: number, held = 0) => !Number.isSafeInteger(next) || next + held > MAX;

/** All lines of one partition, or none: every line is checked before any stock is taken. */
function reserve(state: StateView, lines: ReserveCmd['lines']): HoldResult<ReserveCmd['lines']> {
  const want = new Map<string, number>();
  for (const [id, quantity] of lines) want.set(id, (want.get(id) ?? 0) + quantity);
  for (const [id, quantity] of want) {
    const item = state.get<Item>(ITEMS, id);
    if (!item) return { ok: false, code: 'not_found', detail: `item ${id}` };
    if (item.stock < quantity) return { ok: false, code: 'insufficient_stock', detail: `item ${id} has ${item.stock}, the order needs ${quantity}` };
  }
  for (const [id, quantity] of want) {
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
  reminders: ledgerReminders('stock'),
  tables: [ITEMS, LEDGER],

  apply(state: StateView, cmd: StockCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create': {
        if (overflows(0, heldUnits(state).get(cmd.id))) return { reply: fail('overflow', `item ${cmd.id}: what running checkouts hold`) };
        state.set(ITEMS, cmd.id, assertItem({ stock: 0, price: cmd.price }));
        return { reply: ok({}) };
      }
      case 'batchInit': {
        // All of the range or none of it: an item running sagas hold units of keeps them returnable.
        const held = heldUnits(state);
        const ids = [...ownShare(cmd, ctx)];
        const clash = held.size === 0 ? undefined : ids.find((id) => overflows(cmd.stock, held.get(id)));
        if (clash !== undefined) return { reply: fail('overflow', `item ${clash}: stock plus what running checkouts hold`) };
        for (const id of ids) state.set(ITEMS, id, assertItem({ stock: cmd.stock, price: cmd.price }));
        return { reply: ok({}) };
      }
      case 'add': {
        const item = state.get<Item>(ITEMS, cmd.id);
        if (!item) return { reply: fail('not_found', `item ${cmd.id}`) };
        const next = item.stock + cmd.amount;
        if (overflows(next)) return { reply: fail('overflow', `item ${cmd.id}`) };
        const held = heldUnits(state).get(cmd.id);
        if (overflows(next, held)) return { reply: fail('overflow', `item ${cmd.id}: stock plus the ${held} units running checkouts hold`) };
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
