/**
 * Connection health for the readiness probes: whether this process's NATS connection and Redis client can reach
 * their servers now. A socket that is open says little (a paused or wedged server keeps it open, and nats.js
 * notices a dead server only after minutes of missed pings by default), so each connection is also pinged every
 * HEALTH_PING_INTERVAL_MS and counts as down while a ping has gone unanswered for HEALTH_PING_DEADLINE_MS.
 */
import type { Redis } from 'ioredis';
import { Events, type NatsConnection } from 'nats';
import type { Probe } from './admin-http.js';

/** How often each connection is pinged (one ping in flight at a time). */
export const HEALTH_PING_INTERVAL_MS = 500;
/** A ping unanswered this long marks its connection down until one is answered. */
export const HEALTH_PING_DEADLINE_MS = 2000;

export interface ConnectionHealth {
  probe(): Probe;
  stop(): void;
}

export interface PingTiming {
  intervalMs?: number;
  deadlineMs?: number;
}

/** Pings with `ping` every interval; `down()` says since when (ms ago) it has gone unanswered or failed, or 0. */
function pinger(ping: () => Promise<unknown>, { intervalMs = HEALTH_PING_INTERVAL_MS, deadlineMs = HEALTH_PING_DEADLINE_MS }: PingTiming) {
  let sentAt: number | undefined;
  /** When the pings began to fail (a rejected ping), until one is answered. */
  let failingSince: number | undefined;
  let lastError = '';
  const send = () => {
    if (sentAt !== undefined) return; // one at a time: a paused server gets no pile of pings
    const at = (sentAt = Date.now());
    ping().then(
      () => {
        failingSince = undefined;
      },
      (err: unknown) => {
        failingSince ??= at;
        lastError = err instanceof Error ? err.message : String(err);
      },
    ).finally(() => {
      sentAt = undefined;
    });
  };
  const timer = setInterval(send, intervalMs);
  timer.unref();
  send();
  return {
    /** How long the connection has not answered (ms), if that is past the deadline; else 0. */
    down(now = Date.now()): { forMs: number; why: string } | undefined {
      if (sentAt !== undefined && now - sentAt > deadlineMs) return { forMs: now - sentAt, why: 'no answer to a ping' };
      if (failingSince !== undefined) return { forMs: now - failingSince, why: lastError || 'ping failed' };
      return undefined;
    },
    stop: () => clearInterval(timer),
  };
}

/** NATS: down while closed, between a disconnect and the reconnect, and while its server does not answer pings. */
export function natsHealth(nc: NatsConnection, timing: PingTiming = {}): ConnectionHealth {
  let disconnectedAt: number | undefined;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === Events.Disconnect) disconnectedAt ??= Date.now();
      else if (s.type === Events.Reconnect) disconnectedAt = undefined;
    }
  })().catch(() => {}); // the iterator ends when the connection closes; isClosed() says so then
  const ping = pinger(() => nc.rtt(), timing);
  return {
    probe(): Probe {
      if (nc.isClosed()) return { ok: false, detail: 'NATS connection closed' };
      const now = Date.now();
      if (disconnectedAt !== undefined) return { ok: false, detail: `NATS disconnected ${now - disconnectedAt} ms ago, reconnecting` };
      const down = ping.down(now);
      return down ? { ok: false, detail: `NATS not answering for ${down.forMs} ms (${down.why})` } : { ok: true };
    },
    stop: ping.stop,
  };
}

/** Redis: down while the client is not ready (connecting, reconnecting, closed) and while its server does not answer pings. */
export function redisHealth(redis: Redis, timing: PingTiming = {}): ConnectionHealth {
  const ping = pinger(() => redis.ping(), timing);
  return {
    probe(): Probe {
      if (redis.status !== 'ready') return { ok: false, detail: `Redis ${redis.status}` };
      const down = ping.down();
      return down ? { ok: false, detail: `Redis not answering for ${down.forMs} ms (${down.why})` } : { ok: true };
    },
    stop: ping.stop,
  };
}

/** Ok when every probe is; otherwise not ok, saying what is not (in the order given). */
export function allOf(...probes: Probe[]): Probe {
  const down = probes.filter((p) => !p.ok);
  if (down.length === 0) {
    const details = probes.map((p) => p.detail).filter(Boolean);
    return details.length > 0 ? { ok: true, detail: details.join('; ') } : { ok: true };
  }
  return { ok: false, detail: down.map((p) => p.detail ?? 'not ok').join('; ') };
}
