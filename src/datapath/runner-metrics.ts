import type { Kind } from '../config.js';

/** What a partition runner reports; the worker's admin endpoint exposes it (Prometheus text). */
export interface RunnerMetrics {
  /** One committed batch: how many commands it applied and how long its Redis commit took. */
  batch(kind: Kind, partition: number, commands: number, commitMs: number): void;
  /** Decided checkouts of one committed batch with the same outcome: paid, or refused with a code. */
  sagaOutcome(ok: boolean, code: string | undefined, count: number): void;
  /** A message a partition could not apply (undecodable, invalid, unknown kind, breaks an invariant), passed as a dead letter. */
  deadLetter?(kind: Kind, partition: number, reason: DeadLetterReason): void;
  /** A partition restarted from its committed state after a failure (each attempt counts). */
  partitionRestart?(kind: Kind, partition: number): void;
}

/** Why a message became a dead letter: a fixed set, so the metric's label values stay bounded. */
export const DEAD_LETTER_REASONS = ['undecodable', 'invalid', 'unknown_kind', 'invariant', 'oversized', 'quarantined'] as const;
export type DeadLetterReason = (typeof DEAD_LETTER_REASONS)[number];
