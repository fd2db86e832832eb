import type { Kind } from '../config.js';
import type { ErrorCode } from '../errors.js';
import type { ForgetCmd, ReleaseCmd, SagaAnswer } from './commands.js';
import type { ApplyContext, Outgoing, StateView } from './types.js';

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
  return answer(cmd, part, 'release', { ok: true, at });
}

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
 * The commands one coordinator batch sends to one participant partition, with all their forgets as one, after the
 * other commands: a third of a checkout's commands were forgets, each applied (and bundled, decoded, dispatched) on
 * its own. Moving a forget later is always safe: an entry kept a little longer only answers a late copy.
 */
export function mergeForgets(cmds: unknown[]): unknown[] {
  const others: unknown[] = [];
  const sagas: ForgetCmd['sagas'] = [];
  for (const cmd of cmds) {
    if ((cmd as { k?: unknown }).k === 'forget') sagas.push(...(cmd as ForgetCmd).sagas);
    else others.push(cmd);
  }
  if (sagas.length === 0) return cmds;
  others.push({ k: 'forget', sagas } satisfies ForgetCmd);
  return others;
}
