import type { Kind } from './config.js';
import type { ErrorCode } from './errors.js';

/**
 * Names on NATS. One stream per actor kind (STOCK, PAYMENT, ORDER) holding every command to that kind;
 * the partition is the last subject token, so `nats stream view STOCK --subject stock.cmd.7` shows one partition.
 */
export interface Names {
  stream(kind: Kind): string;
  /** JetStream subject of a partition's commands. */
  cmd(kind: Kind, partition: number): string;
  /** Core NATS subject on which the owner answers reads. */
  get(kind: Kind, partition: number): string;
  /** Reply subjects of one process (gateway or worker): `<inbox>.<token>`, one wildcard subscription for all. */
  inbox(processId: string): string;
}

export function names(prefix: string): Names {
  const p = prefix ? `${prefix}.` : '';
  const s = prefix ? `${prefix}_` : '';
  return {
    stream: (kind) => `${s}${kind.toUpperCase()}`,
    cmd: (kind, partition) => `${p}${kind}.cmd.${partition}`,
    get: (kind, partition) => `${p}${kind}.get.${partition}`,
    inbox: (processId) => `${p}_reply.${processId}`,
  };
}

/** The outcome of a command or read: a value, or a business failure as a stable code. */
export type Reply<V = unknown> = { ok: true; v: V } | { ok: false; code: ErrorCode; detail?: string };

export const ok = <V>(v: V): Reply<V> => ({ ok: true, v });
export const fail = (code: ErrorCode, detail?: string): Reply<never> =>
  detail === undefined ? { ok: false, code } : { ok: false, code, detail };

/** What travels on a command subject. `r` is set by a gateway waiting for the outcome: the owner publishes the Reply there. */
export interface CommandEnvelope<C = unknown> {
  c: C;
  /** reply subject */
  r?: string;
}
