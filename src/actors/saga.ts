import type { Kind } from '../config.js';
import type { ErrorCode } from '../errors.js';
import type { Outgoing, StateView } from './types.js';

/**
 * The checkout saga's messages and the participant side of it (stock and payment partitions).
 *
 * Coordinator (order partition) -> participant: hold (reserve/debit), release (compensate), forget (saga finished).
 * Participant -> coordinator: an answer for each hold and each release.
 * Every message may arrive twice, and a release may overtake its hold; the ledger makes both harmless.
 */

/** A participant partition, as named in a saga: "stock:3", "payment:17". */
export type Part = `${Kind}:${number}`;

export const partOf = (kind: Kind, partition: number): Part => `${kind}:${partition}`;

export function parsePart(part: Part): { kind: Kind; partition: number } {
  const [kind, partition] = part.split(':');
  return { kind: kind as Kind, partition: Number(partition) };
}

/** Fields every coordinator -> participant message carries, so the answer finds its way back. */
export interface SagaRef {
  saga: string;
  order: string;
  /** The coordinating order partition. */
  from: number;
}

export type ReleaseCmd = SagaRef & { k: 'release' };
export type ForgetCmd = { k: 'forget'; saga: string };

export interface SagaAnswer {
  k: 'answer';
  saga: string;
  order: string;
  part: Part;
  phase: 'hold' | 'release';
  ok: boolean;
  code?: ErrorCode;
  detail?: string;
}

/** A participant's record of one saga: what it holds, that it refused, or a tombstone after release. */
export type LedgerEntry<H> = { s: 'held'; held: H } | { s: 'rejected'; code: ErrorCode; detail?: string } | { s: 'released' };

export type HoldResult<H> = { ok: true; held: H } | { ok: false; code: ErrorCode; detail?: string };

export const LEDGER = 'ledger';

function answer(ref: SagaRef, part: Part, phase: SagaAnswer['phase'], result: { ok: boolean; code?: ErrorCode; detail?: string | undefined }): Outgoing {
  const cmd: SagaAnswer = { k: 'answer', saga: ref.saga, order: ref.order, part, phase, ok: result.ok };
  if (result.code !== undefined) cmd.code = result.code;
  if (result.detail !== undefined) cmd.detail = result.detail;
  return { kind: 'order', partition: ref.from, cmd };
}

/**
 * Applies a hold once: a repeated hold gets the recorded answer, a hold after its release (tombstone) is refused.
 * `attempt` must change nothing when it refuses.
 */
export function hold<H>(state: StateView, ref: SagaRef, part: Part, attempt: () => HoldResult<H>): Outgoing {
  const entry = state.get<LedgerEntry<H>>(LEDGER, ref.saga);
  if (entry?.s === 'held') return answer(ref, part, 'hold', { ok: true });
  if (entry?.s === 'rejected') return answer(ref, part, 'hold', { ok: false, code: entry.code, detail: entry.detail });
  if (entry?.s === 'released') return answer(ref, part, 'hold', { ok: false, code: 'checkout_aborted', detail: 'released before it was held' });
  const result = attempt();
  const recorded: LedgerEntry<H> = result.ok ? { s: 'held', held: result.held } : result.detail === undefined ? { s: 'rejected', code: result.code } : { s: 'rejected', code: result.code, detail: result.detail };
  state.set(LEDGER, ref.saga, recorded);
  return answer(ref, part, 'hold', result);
}

/** Gives back what the saga holds (once) and leaves a tombstone, so a hold arriving later is refused. */
export function release<H>(state: StateView, ref: SagaRef, part: Part, undo: (held: H) => void): Outgoing {
  const entry = state.get<LedgerEntry<H>>(LEDGER, ref.saga);
  if (entry?.s === 'held') undo(entry.held);
  if (entry?.s !== 'released') state.set(LEDGER, ref.saga, { s: 'released' } satisfies LedgerEntry<H>);
  return answer(ref, part, 'release', { ok: true });
}

/** The saga has finished: what it holds is final (or was given back); its entry is no longer needed. */
export function forget(state: StateView, saga: string): void {
  state.delete(LEDGER, saga);
}
