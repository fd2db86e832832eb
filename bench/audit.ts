/**
 * The conservation audit after a run, as pure arithmetic over what the API reports afterwards: every item's
 * stock plus what paid orders took of it equals its starting stock, every user's credit plus what its paid
 * orders cost equals its starting credit, and each order's answers agree with its final state.
 */

/** Per order of the run: what its checkouts were answered. Bits, so repeated checkouts (wdm-stress) accumulate. */
export const SENT = 1;
export const ANSWERED_2XX = 2;
export const ANSWERED_4XX = 4;
/** A 5xx, another status, or no response: the checkout may or may not have happened. */
export const UNDECIDED = 8;

export class OrderOutcomes {
  readonly flags: Uint8Array;
  constructor(readonly count: number) {
    this.flags = new Uint8Array(count);
  }
  sent(index: number): void {
    this.flags[index]! |= SENT;
  }
  /** `status` 0: no response. */
  answered(index: number, status: number): void {
    this.flags[index]! |= status >= 200 && status < 300 ? ANSWERED_2XX : status >= 400 && status < 500 ? ANSWERED_4XX : UNDECIDED;
  }
}

/** GET /orders/find/<id>, as the API answers it. */
export interface OrderView {
  paid: boolean;
  items: ReadonlyArray<readonly [string, number]>;
  user_id: string;
  total_cost: number;
}

export interface AuditInput {
  /** Index i is order "i"; undefined where it could not be read. */
  orders: ReadonlyArray<OrderView | undefined>;
  /** Item id -> stock now, for every item the orders may name. */
  stock: ReadonlyMap<string, number>;
  /** User id -> credit now, for every user the orders may name. */
  credit: ReadonlyMap<string, number>;
  /** Items and users that should have been read but could not be ("item 7", "user 3"). */
  missing?: readonly string[];
  initialStock: number;
  initialCredit: number;
  outcomes: OrderOutcomes;
}

export interface AuditResult {
  pass: boolean;
  orders: {
    read: number;
    paid: number;
    unpaid: number;
    /** Orders with at least one 2xx checkout answer (each must be paid). */
    answered2xx: number;
    /** Orders whose checkouts were all refused with a 4xx (each must be unpaid). */
    refused: number;
    /** Orders with a 5xx or unanswered checkout and no 2xx: either state is allowed. */
    undecided: number;
    /** Orders never checked out (each must be unpaid). */
    notSent: number;
  };
  items: { checked: number; sold: number; taken: number };
  users: { checked: number; charged: number; taken: number };
  violations: {
    /** A checkout answered 2xx but the order is not paid. */
    okButUnpaid: number;
    /** Every checkout answered 4xx but the order is paid. */
    refusedButPaid: number;
    /** Never checked out, yet paid. */
    notSentButPaid: number;
    /** stock + sold != starting stock. */
    stock: number;
    /** credit + charged != starting credit. */
    credit: number;
    negative: number;
    /** A paid order names an item or user the audit has no reading of, or an order could not be read. */
    unreadable: number;
  };
  /** The first few violations, readable. */
  examples: string[];
}

const EXAMPLES_MAX = 20;

export function auditConservation(input: AuditInput): AuditResult {
  const r: AuditResult = {
    pass: false,
    orders: { read: 0, paid: 0, unpaid: 0, answered2xx: 0, refused: 0, undecided: 0, notSent: 0 },
    items: { checked: 0, sold: 0, taken: 0 },
    users: { checked: 0, charged: 0, taken: 0 },
    violations: { okButUnpaid: 0, refusedButPaid: 0, notSentButPaid: 0, stock: 0, credit: 0, negative: 0, unreadable: 0 },
    examples: [],
  };
  const problem = (key: keyof AuditResult['violations'], text: string) => {
    r.violations[key]++;
    if (r.examples.length < EXAMPLES_MAX) r.examples.push(text);
  };
  const sold = new Map<string, number>();
  const charged = new Map<string, number>();

  for (let i = 0; i < input.orders.length; i++) {
    const order = input.orders[i];
    if (!order) {
      problem('unreadable', `order ${i} could not be read`);
      continue;
    }
    r.orders.read++;
    const flags = input.outcomes.flags[i] ?? 0;
    if (order.paid) {
      r.orders.paid++;
      for (const [item, qty] of order.items) sold.set(item, (sold.get(item) ?? 0) + qty);
      charged.set(order.user_id, (charged.get(order.user_id) ?? 0) + order.total_cost);
    } else {
      r.orders.unpaid++;
    }
    if (flags & ANSWERED_2XX) {
      r.orders.answered2xx++;
      if (!order.paid) problem('okButUnpaid', `order ${i}: a checkout answered 2xx, but the order is not paid`);
    } else if (flags & UNDECIDED || (flags & SENT && !(flags & ANSWERED_4XX))) {
      r.orders.undecided++;
    } else if (flags & ANSWERED_4XX) {
      r.orders.refused++;
      if (order.paid) problem('refusedButPaid', `order ${i}: every checkout answered 4xx, but the order is paid`);
    } else {
      r.orders.notSent++;
      if (order.paid) problem('notSentButPaid', `order ${i}: never checked out, but paid`);
    }
  }

  for (const what of input.missing ?? []) problem('unreadable', `${what} could not be read`);
  for (const [item, qty] of sold) {
    if (!input.stock.has(item)) problem('unreadable', `item ${item}: named by paid orders (${qty} sold) but not read`);
  }
  for (const [user, cost] of charged) {
    if (!input.credit.has(user)) problem('unreadable', `user ${user}: charged ${cost} by paid orders but not read`);
  }
  for (const [item, stock] of input.stock) {
    r.items.checked++;
    const s = sold.get(item) ?? 0;
    r.items.sold += s;
    r.items.taken += input.initialStock - stock;
    if (stock < 0) problem('negative', `item ${item}: stock ${stock} is below zero`);
    if (stock + s !== input.initialStock) problem('stock', `item ${item}: stock ${stock} + sold ${s} = ${stock + s}, started with ${input.initialStock}`);
  }
  for (const [user, credit] of input.credit) {
    r.users.checked++;
    const c = charged.get(user) ?? 0;
    r.users.charged += c;
    r.users.taken += input.initialCredit - credit;
    if (credit < 0) problem('negative', `user ${user}: credit ${credit} is below zero`);
    if (credit + c !== input.initialCredit) problem('credit', `user ${user}: credit ${credit} + charged ${c} = ${credit + c}, started with ${input.initialCredit}`);
  }
  r.pass = Object.values(r.violations).every((n) => n === 0);
  return r;
}

/** One line: "PASS: 20000 orders (19990 paid) ..." or "FAIL: 3 violations (...)". */
export function verdict(r: AuditResult): string {
  const o = r.orders;
  const counts =
    `${o.read} orders read (${o.paid} paid, ${o.unpaid} unpaid; ${o.answered2xx} answered 2xx, ${o.refused} refused, ${o.undecided} undecided, ${o.notSent} not checked out), ` +
    `${r.items.checked} items (${r.items.sold} units sold), ${r.users.checked} users (${r.users.charged} charged)`;
  if (r.pass) return `PASS: ${counts}`;
  const bad = Object.entries(r.violations)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  return `FAIL: ${bad}; ${counts}`;
}
