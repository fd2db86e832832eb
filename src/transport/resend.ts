/**
 * Answers lost in a reconnect, sent again. A command's outcome travels to its gateway as a core NATS message, which
 * nobody stores: one published while the gateway is between two servers (its server died or hangs, and it has not
 * yet noticed and reconnected), or written by a worker into the socket of a server that then dies, is gone, and the
 * client waited for nothing until the request deadline (a 503 for a command that had its outcome). The outcome is
 * committed, so sending it again is always right; a copy for a request already answered is dropped by the mux.
 *
 * - A worker keeps the answers it sent for ANSWERS_KEPT_MS (Mux `keepAnswers`). When it reconnects itself, it sends
 *   again everything it sent since shortly before it noticed the disconnect.
 * - A gateway that reconnects asks every worker (`<prefix>._shop.resend`) to send again what they sent to its inbox
 *   since shortly before its disconnect. The request leaves over the new connection after the gateway's subscription
 *   was made there, and routes carry the subscription ahead of the request, so the answers find it.
 *
 * "Shortly before": a paused or cut-off server is noticed only by unanswered pings, up to (NATS_MAX_PINGS_OUT + 1)
 * ping intervals after it stopped passing messages on.
 */
import type { NatsConnection, Subscription } from 'nats';
import { decode, encode } from '../codec.js';
import { NATS_MAX_PINGS_OUT } from './connect.js';
import type { Log } from '../log.js';
import { ANSWERS_KEPT_MS, type Mux } from './mux.js';

/** nats.js's default ping interval, for a process configured without one. */
const NATS_DEFAULT_PING_INTERVAL_MS = 120_000;

/** How far back before a noticed disconnect answers may have been lost: until unanswered pings revealed it. */
export function lossBeforeNoticeMs(pingIntervalMs: number | undefined): number {
  return (NATS_MAX_PINGS_OUT + 1) * (pingIntervalMs || NATS_DEFAULT_PING_INTERVAL_MS);
}

/** A request to send again: the answers to `inbox` sent within the last `ms`. */
interface ResendRequest {
  inbox: string;
  ms: number;
}

/** Longest inbox a resend request may name, and most bytes of a request (checked before decoding). */
const RESEND_INBOX_MAX_CHARS = 256;
export const RESEND_REQUEST_BYTES_MAX = 512;
/** A worker sends an inbox's answers again at most once in this time, and remembers this many inboxes for it. */
const RESEND_MIN_INTERVAL_MS = 1000;
const RESEND_INBOXES_MAX = 4096;

export function isResendRequest(value: unknown, replies: string): value is ResendRequest {
  const r = value as ResendRequest;
  return (
    typeof r === 'object' && r !== null && !Array.isArray(r) && Object.keys(r).length === 2 &&
    typeof r.inbox === 'string' && r.inbox.startsWith(replies) && r.inbox.length <= RESEND_INBOX_MAX_CHARS && !/[\s*>]/.test(r.inbox) &&
    typeof r.ms === 'number' && Number.isFinite(r.ms) && r.ms > 0
  );
}

/** Calls `each(ms)` on every reconnect, with the time since the disconnect was noticed plus `beforeMs`. */
function onReconnect(nc: NatsConnection, beforeMs: number, each: (ms: number) => void): void {
  void (async () => {
    let disconnectedAt = Date.now();
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') disconnectedAt = Date.now();
      else if (s.type === 'reconnect') each(Math.min(ANSWERS_KEPT_MS, Date.now() - disconnectedAt + beforeMs));
    }
  })().catch(() => {});
}

/**
 * A worker's side: sends its kept answers again after its own reconnect, and to a gateway that asks on `subject`.
 * Returns the subscription (closed with the connection).
 */
export function resendAnswers({ nc, mux, subject, replies, pingIntervalMs, log }: { nc: NatsConnection; mux: Mux; subject: string; replies: string; pingIntervalMs: number | undefined; log: Log }): Subscription {
  onReconnect(nc, lossBeforeNoticeMs(pingIntervalMs), (ms) => {
    const sent = mux.resendAnswers(ms);
    if (sent > 0) log.info('reconnected: sent the answers of the last moments again', { ms, messages: sent });
  });
  // A gateway asks once per reconnect: more often is a loop or an attacker making every worker send its answers again.
  const lastAsked = new Map<string, number>();
  return nc.subscribe(subject, {
    callback: (err, msg) => {
      if (err) return;
      let request: unknown;
      try {
        request = decode(msg.data, RESEND_REQUEST_BYTES_MAX);
      } catch {
        return; // not one: nothing to send
      }
      if (!isResendRequest(request, replies)) return;
      const now = Date.now();
      if (now - (lastAsked.get(request.inbox) ?? -Infinity) < RESEND_MIN_INTERVAL_MS) return;
      if (lastAsked.size >= RESEND_INBOXES_MAX) lastAsked.clear();
      lastAsked.set(request.inbox, now);
      const sent = mux.resendAnswers(Math.min(ANSWERS_KEPT_MS, request.ms), request.inbox);
      if (sent > 0) log.info('a gateway reconnected: sent its answers of the last moments again', { inbox: request.inbox, ms: request.ms, messages: sent });
    },
  });
}

/** A gateway's side: after each reconnect, asks the workers for the answers to `inbox` it may have missed. */
export function askForLostAnswers({ nc, subject, inbox, pingIntervalMs, log }: { nc: NatsConnection; subject: string; inbox: string; pingIntervalMs: number | undefined; log: Log }): void {
  onReconnect(nc, lossBeforeNoticeMs(pingIntervalMs), (ms) => {
    try {
      nc.publish(subject, encode({ inbox, ms } satisfies ResendRequest));
      log.info('reconnected: asked the workers for answers sent meanwhile', { ms });
    } catch (err) {
      log.warn('could not ask the workers for answers sent while reconnecting', { err });
    }
  });
}
