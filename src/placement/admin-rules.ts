/**
 * The admin requests' rules, the pure part: who may send one (adminRefusal), whether a move, drain or rebalance is
 * allowed and what it changes (planAdmin), what is still pending of it (pendingOf), and the answer (replyOf).
 * admin.ts is the shell: it performs the changes, asks the leader to reconcile, and waits for them to take effect.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Kind } from '../config.js';
import type { Placed } from './moves.js';
import { parsePlacementKey, placementKey, type Assignment, type Heartbeat } from './placement.js';

/** How long an admin request waits for its moves to take effect before it answers with what is still pending. */
export const ADMIN_SETTLE_DEADLINE_MS = 30_000;
/** Header carrying config.adminToken on admin requests. */
export const ADMIN_TOKEN_HEADER = 'Shop-Admin-Token';

export type AdminRequest =
  | { op: 'move'; kind: Kind; partition: number; worker: string }
  | { op: 'drain'; worker: string }
  | { op: 'rebalance' };

export type AdminReply = { ok: true; message: string; moves: number; ms: number; detail?: unknown } | { ok: false; error: string };

/** Every server of `natsUrl` (a comma-separated list) is on this machine. */
export const isLoopbackUrl = (urls: string) => urls.split(',').every((url) => /^(nats|tls):\/\/([^@/]*@)?(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\/?$/.test(url.trim()));

/**
 * Why an admin request is refused, or undefined when it is allowed: with an admin token set, the request must carry
 * it (`given`, compared in constant time); without one, only over a NATS that is all on loopback.
 */
export function adminRefusal(token: string, given: string, natsUrl: string): string | undefined {
  if (token) {
    const g = Buffer.from(given);
    const wanted = Buffer.from(token);
    return g.length === wanted.length && timingSafeEqual(g, wanted) ? undefined : `admin requests need the admin token (${ADMIN_TOKEN_HEADER} header; shopctl --token or SHOP_ADMIN_TOKEN)`;
  }
  return isLoopbackUrl(natsUrl) ? undefined : `admin requests are refused: NATS (${natsUrl}) is not on loopback and no adminToken is set; set SHOP_ADMIN_TOKEN on the workers and shopctl`;
}

/** A refused request. */
export type Refused = { ok: false; error: string };

/** The live worker a request names: its id, or the one live id it is the start of. */
export function resolveWorker(given: string, live: readonly string[]): { ok: true; worker: string } | Refused {
  if (live.includes(given)) return { ok: true, worker: given };
  const matches = live.filter((w) => w.startsWith(given));
  if (matches.length === 1) return { ok: true, worker: matches[0]! };
  return { ok: false, error: matches.length === 0 ? `no live worker ${JSON.stringify(given)}; live: ${live.join(', ') || 'none'}` : `${JSON.stringify(given)} names several workers: ${matches.join(', ')}` };
}

/** What the leader knows when a request arrives. */
export interface AdminView {
  kinds: readonly Kind[];
  partitions: number;
  /** The live workers' heartbeats. */
  live: readonly Heartbeat[];
  drains: ReadonlySet<string>;
  placement: ReadonlyMap<string, Placed>;
  pins: ReadonlyMap<string, string>;
}

/** An allowed request and what it changes. */
export type AdminChange =
  /** Pin the partition at `key` to `worker` (it moves there from `from`). */
  | { op: 'move'; kind: Kind; partition: number; key: string; worker: string; from: string | undefined }
  /** Mark `worker` as draining (it holds `held` partitions now, all to move elsewhere). */
  | { op: 'drain'; worker: string; held: number }
  /** Drop every pin (`unpin`: their placement keys), so the balance decides again. */
  | { op: 'rebalance'; unpin: string[] };

export function planAdmin(req: AdminRequest, v: AdminView): ({ ok: true } & AdminChange) | Refused {
  switch (req.op) {
    case 'move': {
      const { kind, partition } = req;
      if (!v.kinds.includes(kind)) return { ok: false, error: `unknown kind ${JSON.stringify(kind)}; this deployment runs ${v.kinds.join(', ')}` };
      if (!Number.isInteger(partition) || partition < 0 || partition >= v.partitions) return { ok: false, error: `partition must be 0..${v.partitions - 1}, got ${partition}` };
      const resolved = resolveWorker(req.worker, v.live.map((hb) => hb.id));
      if (!resolved.ok) return resolved;
      const { worker } = resolved;
      const hb = v.live.find((h) => h.id === worker)!;
      if (!hb.kinds.includes(kind)) return { ok: false, error: `worker ${worker} does not host ${kind} (it hosts ${hb.kinds.join(', ')})` };
      if (hb.draining || v.drains.has(worker)) return { ok: false, error: `worker ${worker} is draining` };
      const key = placementKey(kind, partition);
      return { ok: true, op: 'move', kind, partition, key, worker, from: v.placement.get(key)?.a.worker };
    }
    case 'drain': {
      const resolved = resolveWorker(req.worker, v.live.map((hb) => hb.id));
      if (!resolved.ok) return resolved;
      const { worker } = resolved;
      return { ok: true, op: 'drain', worker, held: [...v.placement.values()].filter((p) => p.a.worker === worker).length };
    }
    case 'rebalance':
      return { ok: true, op: 'rebalance', unpin: [...v.pins.keys()] };
    default:
      return { ok: false, error: `unknown admin op ${JSON.stringify((req as { op: unknown }).op)}; known: move, drain, rebalance` };
  }
}

/** What the leader knows while it waits for a change to take effect. */
export interface SettleView {
  placement: ReadonlyMap<string, Placed>;
  /** The last heartbeat of a worker, alive or not. */
  heartbeatOf: (worker: string) => Heartbeat | undefined;
  alive: (worker: string) => boolean;
}

/** The placement keys (among those `filter` keeps) not yet held, at their placement epoch, by the worker the placement names. */
export function unsettled(v: SettleView, filter: (key: string, a: Assignment) => boolean = () => true): string[] {
  const pending: string[] = [];
  for (const [key, { a }] of v.placement) {
    if (!filter(key, a)) continue;
    const parsed = parsePlacementKey(key);
    const hb = v.heartbeatOf(a.worker);
    if (!parsed || !hb?.held.some((h) => h.k === parsed.kind && h.p === parsed.partition && h.e === a.epoch)) pending.push(key);
  }
  return pending;
}

/** What is still pending of a change, by placement key: empty when it has taken effect. */
export function pendingOf(c: AdminChange, v: SettleView): string[] {
  switch (c.op) {
    case 'move':
      return v.placement.get(c.key)?.a.worker === c.worker ? unsettled(v, (k) => k === c.key) : [c.key];
    case 'drain': {
      // Placed on it still, or still running there (while it lives).
      const hb = v.heartbeatOf(c.worker);
      const still = [...v.placement].filter(([, p]) => p.a.worker === c.worker).map(([k]) => k);
      return [...still, ...(hb && v.alive(c.worker) ? hb.held.map((h) => placementKey(h.k, h.p)) : [])];
    }
    case 'rebalance':
      return unsettled(v);
  }
}

/** The answer to a change, after the wait: `pending` what had not taken effect by then, `moves` the placement writes meanwhile. */
export function replyOf(c: AdminChange, pending: readonly string[], done: { moves: number; ms: number; placement: ReadonlyMap<string, Placed> }): AdminReply {
  const { moves, ms } = done;
  switch (c.op) {
    case 'move':
      if (pending.length > 0) return { ok: false, error: `${c.key} is not yet running on ${c.worker} after ${ADMIN_SETTLE_DEADLINE_MS} ms` };
      return { ok: true, message: `moved ${c.kind} ${c.partition}: ${c.from ?? 'nobody'} -> ${c.worker} (epoch ${done.placement.get(c.key)!.a.epoch})`, moves, ms };
    case 'drain':
      if (pending.length > 0) return { ok: false, error: `${c.worker} still holds ${[...new Set(pending)].join(' ')} after ${ADMIN_SETTLE_DEADLINE_MS} ms (does another worker host those kinds?)` };
      return { ok: true, message: `drained ${c.worker}: ${c.held} partitions moved; it exits now`, moves, ms };
    case 'rebalance':
      if (pending.length > 0) return { ok: false, error: `not settled after ${ADMIN_SETTLE_DEADLINE_MS} ms: ${pending.join(' ')}` };
      return { ok: true, message: `balanced: ${moves} partitions moved`, moves, ms };
  }
}
