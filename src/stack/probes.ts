/**
 * Probes of ports and servers, shared by the supervisor and the test helpers: free ports, whether nats-server,
 * redis-server or an HTTP listener answers, and waiting for a condition by polling it with a deadline (never a
 * fixed sleep).
 */
import { connect, createServer } from 'node:net';

/** How long a single readiness probe (one TCP round trip) may take. */
export const PROBE_TIMEOUT_MS = 1000;
/** Pause between readiness probes. */
export const POLL_INTERVAL_MS = 50;

export interface WaitOptions {
  /** Give up after this long. */
  deadlineMs?: number;
  /** Pause between polls. */
  intervalMs?: number;
  /** What is awaited, for the error message: "nats-server on port 4222 to accept clients". */
  what: string;
  /** Stops waiting at once, rejecting with the signal's reason (e.g. "the server exited"). */
  signal?: AbortSignal;
}

/**
 * Polls `fn` until it returns true. On deadline throws an error naming `what` (and the last error
 * `fn` threw, if any). A throw from `fn` counts as "not yet".
 */
export async function waitFor(fn: () => Promise<boolean> | boolean, { deadlineMs = 10_000, intervalMs = POLL_INTERVAL_MS, what, signal }: WaitOptions): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  let lastError: unknown;
  for (;;) {
    signal?.throwIfAborted();
    try {
      if (await fn()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    signal?.throwIfAborted();
    if (Date.now() >= deadline) {
      const why = lastError instanceof Error ? ` (last attempt: ${lastError.message})` : '';
      throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}${why}`);
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, Math.min(intervalMs, Math.max(0, deadline - Date.now())));
      signal?.addEventListener('abort', done, { once: true });
      function done() {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        resolve();
      }
    });
  }
}

/** A port that was free a moment ago: the OS picks it for a listener on port 0, which is then closed. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error('could not learn the port the OS picked'))));
    });
  });
}

/** Tries for a block of consecutive free ports before giving up. */
const PORT_RANGE_ATTEMPTS = 50;
/** Where blocks of consecutive ports are looked for: above the usual services, below the OS's ephemeral range. */
const PORT_RANGE_FROM = 20_000;
const PORT_RANGE_TO = 32_000;

/**
 * The first of `count` consecutive ports that were all free a moment ago (for servers that take consecutive ports
 * from a base: the nodes of a local cluster).
 */
export async function freePortRange(count: number, host = '127.0.0.1'): Promise<number> {
  if (count <= 1) return freePort(host);
  for (let attempt = 0; attempt < PORT_RANGE_ATTEMPTS; attempt++) {
    const base = PORT_RANGE_FROM + Math.floor(Math.random() * (PORT_RANGE_TO - PORT_RANGE_FROM - count));
    let free = true;
    for (let i = 0; i < count && free; i++) free = await portIsFree(base + i, host);
    if (free) return base;
  }
  throw new Error(`found no ${count} consecutive free ports in ${PORT_RANGE_FROM}..${PORT_RANGE_TO} after ${PORT_RANGE_ATTEMPTS} tries`);
}

/** True when nothing listens on host:port (we could bind it), false when it is in use. */
export function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(false) : reject(err)));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** Opens a TCP connection, optionally writes `send`, and resolves with the first `count` lines received. */
function firstLines(port: number, host: string, send?: string, count = 1): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host });
    let data = '';
    const finish = (err: Error | null, lines: string[] = []) => {
      socket.destroy();
      if (err) reject(err);
      else resolve(lines);
    };
    socket.setTimeout(PROBE_TIMEOUT_MS, () => finish(new Error(`no answer from ${host}:${port} within ${PROBE_TIMEOUT_MS} ms`)));
    socket.setEncoding('utf8');
    socket.once('error', (err) => finish(err));
    socket.once('connect', () => {
      if (send) socket.write(send);
    });
    socket.on('data', (chunk: string) => {
      data += chunk;
      const lines = data.split('\r\n').slice(0, -1);
      if (lines.length >= count) finish(null, lines.slice(0, count));
    });
    socket.once('end', () => finish(new Error(`${host}:${port} closed the connection without a complete line`)));
  });
}

/** True when a NATS server answers on the port with its INFO line, and (unless told otherwise) has JetStream on. */
export async function natsAnswers(port: number, { host = '127.0.0.1', jetstream = true } = {}): Promise<boolean> {
  const [line = ''] = await firstLines(port, host);
  if (!line.startsWith('INFO ')) return false;
  const info = JSON.parse(line.slice(5)) as { jetstream?: boolean };
  return !jetstream || info.jetstream === true;
}

/** A command in the Redis protocol (RESP), so that no argument needs quoting. */
const resp = (...args: string[]) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

/**
 * True when Redis answers PING with PONG (not -LOADING while it replays its AOF). With `auth`, it logs in first
 * (AUTH user password, then PING): a server that requires a password answers nothing else.
 */
export async function redisAnswers(port: number, { host = '127.0.0.1', auth }: { host?: string; auth?: { user: string; password: string } } = {}): Promise<boolean> {
  if (!auth) return (await firstLines(port, host, resp('PING')))[0] === '+PONG';
  const [login, pong] = await firstLines(port, host, resp('AUTH', auth.user, auth.password) + resp('PING'), 2);
  if (login !== '+OK') throw new Error(`redis-server on port ${port} refused the login of ${auth.user}: ${login}`);
  return pong === '+PONG';
}

/** True when something accepts a TCP connection on host:port (e.g. the gateway's HTTP listener). */
export function tcpAccepts(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host });
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(PROBE_TIMEOUT_MS, () => finish(false));
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

/** An AbortSignal that aborts when any of `signals` does, with that one's reason. */
export function anySignal(...signals: AbortSignal[]): AbortSignal {
  const controller = new AbortController();
  for (const s of signals) {
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    s.addEventListener('abort', () => controller.abort(s.reason), { once: true });
  }
  return controller.signal;
}
