import type { Kind } from '../config.js';

/** What a partition runner reports; the worker's admin endpoint exposes it (Prometheus text). */
export interface RunnerMetrics {
  /** One committed batch: how many commands it applied and how long its Redis commit took. */
  batch(kind: Kind, partition: number, commands: number, commitMs: number): void;
  /** Decided checkouts of one committed batch with the same outcome: paid, or refused with a code. */
  sagaOutcome(ok: boolean, code: string | undefined, count: number): void;
}
