import type { Kind } from '../config.js';
import type { ErrorCode } from '../errors.js';
import type { ForgetCmd, ReleaseCmd, SagaAnswer } from './commands.js';
import { partitionOf } from '../partitioning.js';
import { ID_MAX_CHARS } from '../protocol.js';
import type { ApplyContext, Outgoing, Reminders, StateView } from './types.js';

/**
 * The checkout saga's messages and the participant side of it (stock and payment partitions).
 *
 * Coordinator (order partition) -> participant: hold (reserve/debit), release (compensate), forget (sagas finished).
 * Participant -> coordinator: an answer for each hold and each release.
 *
 * Any message may arrive twice (an outbox re-sent after the stream's duplicate window), in any order. What keeps
 * stock and credit exact anyway: every ledger entry carries `at`, the participant's command number (`seq`) of the hold
 * that created it, and every answer names it. A forget names the `at` of each saga it finishes, and a release for
 * a hold applied after its saga ended names the `at` it gives back, so neither can touch a different hold of the
 * same saga.
 */

/** A participant partition, as named in a saga: "stock:3", "payment:17". */
export type Part = `${Kind}:${number}`;

export const partOf = (kind: Kind, partition: number): Part => `${kind}:${partition}`;

export function parsePart(part: Part): { kind: Kind; partition: number } {
  const [kind, partition] = part.split(':');
  return { kind: kind as Kind, partition: Number(partition) };
}

/** Fields every coordinator -> participant message carries, so the answer finds its way back. */
export type SagaRef = Pick<ReleaseCmd, 'saga' | 'order' | 'from'>;

export type { ForgetCmd, ReleaseCmd, SagaAnswer };

/** A participant's record of one saga: what it holds, that it refused, or a tombstone after release. */
export type LedgerEntry<H> =
  | { s: 'held'; at: number; held: H }
  | { s: 'rejected'; at: number; code: ErrorCode; detail?: string }
  | { s: 'released'; at: number };

export type HoldResult<H> = { ok: true; held: H } | { ok: false; code: ErrorCode; detail?: string };

export const LEDGER = 'ledger';

interface Outcome {
  ok: boolean;
  at: number;
  code?: ErrorCode | undefined;
  detail?: string | undefined;
}

function answer(ref: SagaRef, part: Part, phase: SagaAnswer['phase'], o: Outcome): Outgoing {
  const cmd: SagaAnswer = { k: 'answer', saga: ref.saga, order: ref.order, part, phase, ok: o.ok, at: o.at };
  if (o.code !== undefined) cmd.code = o.code;
  if (o.detail !== undefined) cmd.detail = o.detail;
  return { kind: 'order', partition: ref.from, cmd };
}

/**
 * Applies a hold once: a repeated hold gets the recorded answer, a hold after its release (tombstone) is refused.
 * `attempt` must change nothing when it refuses.
 */
export function hold<H>(state: StateView, ref: SagaRef, part: Part, ctx: ApplyContext, attempt: () => HoldResult<H>): Outgoing {
  const entry = state.get<LedgerEntry<H>>(LEDGER, ref.saga);
  if (entry) {
    const recorded = { at: entry.at };
    if (entry.s === 'held') return answer(ref, part, 'hold', { ...recorded, ok: true });
    if (entry.s === 'rejected') return answer(ref, part, 'hold', { ...recorded, ok: false, code: entry.code, detail: entry.detail });
    return answer(ref, part, 'hold', { ...recorded, ok: false, code: 'checkout_aborted', detail: 'released before it was held' });
  }
  const result = attempt();
  const at = ctx.seq;
  if (result.ok) {
    state.set(LEDGER, ref.saga, { s: 'held', at, held: result.held } satisfies LedgerEntry<H>);
    return answer(ref, part, 'hold', { ok: true, at });
  }
  const rejected: LedgerEntry<H> = { s: 'rejected', at, code: result.code };
  if (result.detail !== undefined) rejected.detail = result.detail;
  state.set(LEDGER, ref.saga, rejected);
  return answer(ref, part, 'hold', { ok: false, at, code: result.code, detail: result.detail });
}

/** Gives back what the saga holds (once) and leaves a tombstone, so a hold arriving later is refused. */
export function release<H>(state: StateView, cmd: ReleaseCmd, part: Part, ctx: ApplyContext, undo: (held: H) => void): Outgoing {
  const entry = state.get<LedgerEntry<H>>(LEDGER, cmd.saga);
  const at = entry?.at ?? ctx.seq;
  if (cmd.at === undefined || cmd.at === at) {
    if (entry?.s === 'held') undo(entry.held);
    if (entry?.s !== 'released') state.set(LEDGER, cmd.saga, { s: 'released', at } satisfies LedgerEntry<H>);
  }
  // A release of one hold (`at`) names that hold in its answer, whatever entry the saga has now: the coordinator of a
  // saga that has ended forgets the entry an answer names, and must not forget a later hold this release did not undo.
  return answer(cmd, part, 'release', { ok: true, at: cmd.at ?? at });
}

/**
 * A ledger entry's answer goes again this long after it was made, doubling up to the max: long enough that a saga
 * running normally has forgotten it by then (the coordinator re-sends what it waits for itself, much sooner).
 */
const LEDGER_REMIND_FIRST_MS = 10_000;
const LEDGER_REMIND_MAX_MS = 60_000;

/** The order a saga is about: its id is `<order id>#<command number>`. */
export function orderOfSaga(saga: string): string {
  const at = saga.lastIndexOf('#');
  return at < 0 ? saga : saga.slice(0, at);
}

/**
 * What a participant's ledger entry owes its coordinator: the answer it holds, the same every time (a release's for a
 * tombstone, the hold's otherwise). Sent again until the coordinator forgets the entry, which it does for every saga
 * that has ended (order.ts, onAnswer): so an answer lost, a forget lost, or a hold applied anew after its saga ended
 * cannot leave an entry, nor what it holds, behind. The coordinator is the order's partition.
 */
export function ledgerOwes(part: Part, saga: string, entry: LedgerEntry<unknown>, partitions: number): Outgoing[] {
  const order = orderOfSaga(saga);
  if (order.length === 0 || order.length > ID_MAX_CHARS) return []; // no coordinator could take the answer
  const ref: SagaRef = { saga, order, from: partitionOf(order, partitions) };
  if (entry.s === 'released') return [answer(ref, part, 'release', { ok: true, at: entry.at })];
  if (entry.s === 'held') return [answer(ref, part, 'hold', { ok: true, at: entry.at })];
  return [answer(ref, part, 'hold', { ok: false, at: entry.at, code: entry.code, detail: entry.detail })];
}

/** A participant's reminders: its ledger's answers, sent again while nothing forgets them (they rarely need to be). */
export const ledgerReminders = (kind: Kind): Reminders => ({
  table: LEDGER,
  firstMs: LEDGER_REMIND_FIRST_MS,
  maxMs: LEDGER_REMIND_MAX_MS,
  startMs: LEDGER_REMIND_FIRST_MS,
  hurried: false,
  owes: () => true,
  owed: (saga, entry, ctx) => ledgerOwes(partOf(kind, ctx.partition), saga, entry as LedgerEntry<unknown>, ctx.partitions),
});

/** The sagas have ended: what they hold is final (or was given back); their entries are no longer needed. */
export function forget(state: StateView, cmd: ForgetCmd): void {
  for (const [saga, at] of cmd.sagas) {
    if (state.get<LedgerEntry<unknown>>(LEDGER, saga)?.at === at) state.delete(LEDGER, saga);
  }
}

/**
 * What running sagas hold and may still give back, summed per key by `amounts` over the ledger's `held` entries.
 * A top-up checks it, so that a release can always be applied: stock or credit plus what is held stays a safe
 * integer. The ledger holds only the sagas in flight, so the scan is short; it runs only for top-ups.
 */
export function heldBySagas<H>(state: StateView, amounts: (held: H) => Iterable<[key: string, amount: number]>): Map<string, number> {
  const sums = new Map<string, number>();
  for (const [, entry] of state.entries<LedgerEntry<H>>(LEDGER)) {
    if (entry.s !== 'held') continue;
    for (const [key, amount] of amounts(entry.held)) sums.set(key, (sums.get(key) ?? 0) + amount);
  }
  return sums;
}

/**
 * Most sagas in one merged forget: at the longest saga id (ID_MAX_CHARS + 24) about 170 KiB, inside one parcel
 * (PARCEL_BYTES_MAX), which packCommands cannot split below a command.
 */
export const FORGET_MERGED_MAX = 1024;

/**
 * The commands for one participant partition, with all their forgets as one (or as few as FORGET_MERGED_MAX allows),
 * after the other commands: a third of a checkout's commands were forgets, each applied (and bundled, decoded,
 * dispatched) on its own. Moving a forget later is always safe: an entry kept a little longer only answers a late
 * copy. The forgets a worker keeps back (order.ts's `deferrable`) are merged the same way, across its batches.
 */
export function mergeForgets(cmds: unknown[]): unknown[] {
  const others: unknown[] = [];
  const sagas: ForgetCmd['sagas'] = [];
  for (const cmd of cmds) {
    if ((cmd as { k?: unknown }).k === 'forget') sagas.push(...(cmd as ForgetCmd).sagas);
    else others.push(cmd);
  }
  if (sagas.length === 0) return cmds;
  for (let i = 0; i < sagas.length; i += FORGET_MERGED_MAX) others.push({ k: 'forget', sagas: sagas.slice(i, i + FORGET_MERGED_MAX) } satisfies ForgetCmd);
  return others;
}
