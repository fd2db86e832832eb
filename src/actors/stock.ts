import { ownShare } from '../partition.js';
import { fail, ok, type Reply } from '../protocol.js';
import type { ReserveCmd, StockCmd } from './commands.js';
import { forget, hold, LEDGER, partOf, release, type HoldResult } from './saga.js';
import type { Actor, ApplyContext, Effects, ReadView, StateView } from './types.js';

export type { ReserveCmd, StockCmd };

export interface Item {
  stock: number;
  price: number;
  /** Units held by sagas still running (reserved, not yet final): what a release may give back. Absent when 0. */
  held?: number;
}

export type StockQuery = { k: 'find'; id: string };

const ITEMS = 'items';
const MAX = Number.MAX_SAFE_INTEGER;

/**
 * Stock is a safe integer >= 0, and so is stock + held: every release can always give its units back. Top-ups
 * (add, create, batchInit) are what keep the second bound; a violation here is a bug, so it throws.
 */
function assertItem(item: Item): Item {
  const held = item.held ?? 0;
  if (!Number.isSafeInteger(item.stock) || item.stock < 0) throw new Error(`invariant: stock ${item.stock} out of range`);
  if (!Number.isSafeInteger(held) || held < 0 || item.stock + held > MAX) throw new Error(`invariant: stock ${item.stock} + held ${held} out of range`);
  if (held === 0 && item.held !== undefined) {
    const { held: _zero, ...rest } = item;
    return rest;
  }
  return item;
}

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
    state.set(ITEMS, id, assertItem({ ...item, stock: item.stock - quantity, held: (item.held ?? 0) + quantity }));
  }
  return { ok: true, held: lines };
}

/** A release: the held units return to stock. */
function giveBack(state: StateView, lines: ReserveCmd['lines']): void {
  for (const [id, quantity] of lines) {
    const item = state.get<Item>(ITEMS, id);
    if (!item) throw new Error(`invariant: reserved item ${id} vanished`);
    state.set(ITEMS, id, assertItem({ ...item, stock: item.stock + quantity, held: (item.held ?? 0) - quantity }));
  }
}

/** A forget of a successful hold: the units are sold for good, no longer returnable. */
function settle(state: StateView, lines: ReserveCmd['lines']): void {
  for (const [id, quantity] of lines) {
    const item = state.get<Item>(ITEMS, id);
    if (!item) throw new Error(`invariant: reserved item ${id} vanished`);
    state.set(ITEMS, id, assertItem({ ...item, held: (item.held ?? 0) - quantity }));
  }
}

/** Stock `next` for an item that sagas may still give `held` units back to: refused when the two could pass 2^53-1. */
const overflows = (next: number, held = 0) => !Number.isSafeInteger(next) || next + held > MAX;

export const stock: Actor<StockCmd, StockQuery> = {
  kind: 'stock',
  tables: [ITEMS, LEDGER],

  apply(state: StateView, cmd: StockCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create': {
        const held = state.get<Item>(ITEMS, cmd.id)?.held;
        state.set(ITEMS, cmd.id, assertItem(held ? { stock: 0, price: cmd.price, held } : { stock: 0, price: cmd.price }));
        return { reply: ok({}) };
      }
      case 'batchInit': {
        // All of the range or none of it: an item some saga still holds units of keeps them returnable.
        const ids = [...ownShare(cmd, ctx)];
        const clash = ids.find((id) => overflows(cmd.stock, state.get<Item>(ITEMS, id)?.held));
        if (clash !== undefined) return { reply: fail('overflow', `item ${clash}: stock plus what running checkouts hold`) };
        for (const id of ids) {
          const held = state.get<Item>(ITEMS, id)?.held;
          state.set(ITEMS, id, assertItem(held ? { stock: cmd.stock, price: cmd.price, held } : { stock: cmd.stock, price: cmd.price }));
        }
        return { reply: ok({}) };
      }
      case 'add': {
        const item = state.get<Item>(ITEMS, cmd.id);
        if (!item) return { reply: fail('not_found', `item ${cmd.id}`) };
        const next = item.stock + cmd.amount;
        if (overflows(next, item.held)) return { reply: fail('overflow', `item ${cmd.id}${item.held ? `: stock plus the ${item.held} units running checkouts hold` : ''}`) };
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
        forget(state, cmd, (lines: ReserveCmd['lines']) => settle(state, lines));
        return {};
    }
  },

  query(state: ReadView, query: StockQuery): Reply {
    const item = state.get<Item>(ITEMS, query.id);
    return item ? ok({ stock: item.stock, price: item.price }) : fail('not_found', `item ${query.id}`);
  },
};
