/**
 * The admin subject: shopctl's move, drain and rebalance (adminRequest), and the leading controller's answers
 * (serveAdmin). Whether a request is allowed, what it changes and when it has taken effect are admin-rules.ts's
 * decisions; this performs them: it writes the pin or the drain, asks for a placement pass, and waits.
 */
import { headers as natsHeaders, type Msg, type NatsConnection, type Subscription } from 'nats';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { Log } from '../log.js';
import { names } from '../protocol.js';
import { ADMIN_SETTLE_DEADLINE_MS, ADMIN_TOKEN_HEADER, adminRefusal, pendingOf, planAdmin, replyOf, type AdminChange, type AdminReply, type AdminRequest, type SettleView } from './admin-rules.js';
import type { Buckets, MembershipView } from './membership.js';
import type { Placed } from './moves.js';
import { fromBytes, toBytes } from './placement.js';

export type { AdminReply, AdminRequest } from './admin-rules.js';

/** How often an admin request looks whether its change has taken effect. */
const SETTLE_POLL_MS = 20;

/** What the admin requests work on: the controller's view and its placement pass. */
export interface AdminContext {
  nc: NatsConnection;
  config: Config;
  log: Log;
  clock: Clock;
  control: Buckets['control'];
  members: MembershipView;
  placement: ReadonlyMap<string, Placed>;
  pins: Map<string, string>;
  drains: Set<string>;
  /** Placement writes done so far. */
  writes: () => number;
  /** A placement pass; resolves with the writes it made. */
  reconcile: () => Promise<number>;
  /** Deletes a control key. */
  forget: (key: string) => Promise<boolean>;
  /** Only the leader answers. */
  leadsNow: () => boolean;
  closed: () => boolean;
}

/** Answers shopctl's move, drain and rebalance on the admin subject, while this controller leads. */
export function serveAdmin(ctx: AdminContext): Subscription {
  const { config, clock, members, placement } = ctx;
  const settleView: SettleView = { placement, heartbeatOf: (worker) => members.members.get(worker)?.hb, alive: (worker) => members.alive(worker) };

  async function answer(msg: Msg): Promise<void> {
    let reply: AdminReply;
    const started = clock.now();
    try {
      const refusal = adminRefusal(config.adminToken, msg.headers?.get(ADMIN_TOKEN_HEADER) ?? '', config.natsUrl);
      if (refusal) reply = { ok: false, error: refusal };
      else reply = await perform(fromBytes<AdminRequest>(msg.data), started);
    } catch (err) {
      reply = { ok: false, error: (err as Error).message };
    }
    msg.respond(toBytes(reply));
  }

  async function perform(req: AdminRequest, started: number): Promise<AdminReply> {
    const deadline = started + ADMIN_SETTLE_DEADLINE_MS;
    const before = ctx.writes();
    const plan = planAdmin(req, { kinds: config.kinds, partitions: config.partitions, live: members.live().map((m) => m.hb), drains: ctx.drains, placement, pins: ctx.pins });
    if (!plan.ok) return plan;
    await change(plan);
    await ctx.reconcile();
    let pending: string[];
    for (;;) {
      pending = pendingOf(plan, settleView);
      if (pending.length === 0 || clock.now() >= deadline || ctx.closed()) break;
      await clock.sleep(SETTLE_POLL_MS);
    }
    return replyOf(plan, pending, { moves: ctx.writes() - before, ms: clock.now() - started, placement });
  }

  async function change(c: AdminChange): Promise<void> {
    switch (c.op) {
      case 'move':
        await ctx.control.put(`pin.${c.key}`, toBytes({ worker: c.worker }));
        ctx.pins.set(c.key, c.worker);
        break;
      case 'drain':
        await ctx.control.put(`drain.${c.worker}`, toBytes({ at: clock.now() }));
        ctx.drains.add(c.worker);
        break;
      case 'rebalance':
        await Promise.all(c.unpin.map((key) => ctx.forget(`pin.${key}`)));
        ctx.pins.clear();
        break;
    }
  }

  return ctx.nc.subscribe(names(config.streamPrefix).admin, {
    callback: (err, msg) => {
      if (err || !ctx.leadsNow()) return; // only the leader answers
      answer(msg).catch((e: unknown) => ctx.log.warn('could not answer an admin request', { err: e }));
    },
  });
}

/** Sends one admin request to the leading controller and returns its answer. */
export async function adminRequest(nc: NatsConnection, config: Config, req: AdminRequest, { token = config.adminToken, timeoutMs = ADMIN_SETTLE_DEADLINE_MS + 5000 } = {}): Promise<AdminReply> {
  const h = natsHeaders();
  if (token) h.set(ADMIN_TOKEN_HEADER, token);
  let msg: Msg;
  try {
    msg = await nc.request(names(config.streamPrefix).admin, toBytes(req), { timeout: timeoutMs, headers: h });
  } catch (err) {
    const why = (err as Error).message;
    return { ok: false, error: /503|no responders/i.test(why) ? 'no controller answered: are the workers running with placement "dynamic"?' : `no answer from the controller: ${why}` };
  }
  return fromBytes<AdminReply>(msg.data);
}
