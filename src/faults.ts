/**
 * Logging of bad data from outside the process: an answer nobody could have meant (undecodable, wrongly shaped),
 * an invalid value in a KV bucket. Such data is dropped where it arrives, never thrown; this says that it happened
 * without turning a peer that sends garbage at a high rate into a log line per message.
 */
import type { Log } from './log.js';

/** Least time between two log lines about faults of one kind; the later line says how many were not logged. */
export const FAULT_LOG_INTERVAL_MS = 60_000;

/** Most kinds of fault remembered; past it a new kind is logged every time (kinds come from code, so this is never reached). */
const FAULT_KINDS_MAX = 256;

/** Reports one fault. `kind` names what went wrong, from a fixed set in the code (never data from the message). */
export type Fault = (kind: string, data?: Record<string, unknown>) => void;

/**
 * `say` starts each line: "ignored" for data dropped where it arrived; a caller that goes on trying (a refused
 * publish it repeats) says so instead.
 */
export function faultLog(log: Log, intervalMs = FAULT_LOG_INTERVAL_MS, now: () => number = Date.now, say = 'ignored'): Fault {
  const seen = new Map<string, { at: number; dropped: number }>();
  return (kind, data) => {
    const t = now();
    const last = seen.get(kind);
    if (last && t - last.at < intervalMs) {
      last.dropped++;
      return;
    }
    const dropped = last?.dropped ?? 0;
    if (last || seen.size < FAULT_KINDS_MAX) seen.set(kind, { at: t, dropped: 0 });
    log.warn(`${say}: ${kind}`, { ...data, ...(dropped > 0 ? { alsoIgnoredSinceLastLine: dropped } : {}), nextLineAfterMs: intervalMs });
  };
}

/** What a message looked like, for a fault's log line: its size and first bytes, never all of it. */
export function preview(data: Uint8Array): { bytes: number; head: string } {
  return { bytes: data.length, head: Buffer.from(data.subarray(0, 16)).toString('hex') };
}
