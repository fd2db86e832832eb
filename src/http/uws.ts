/**
 * The one place that touches uWebSockets.js. Its rules, all kept here:
 * - `req` is valid only inside the callback: method and url are copied at once.
 * - `res.onAborted` is registered before any async work; after an abort `res` is never touched.
 * - A response written after an await is written inside `res.cork()` (one syscall, and uWS requires it).
 * Above this file a request is `handle(method, path) → Promise<HttpResult>`.
 */
import { STATUS_CODES } from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import uWS, { type HttpResponse, type TemplatedApp, type us_listen_socket } from 'uWebSockets.js';
import { errorResponse } from '../errors.js';
import type { Log } from '../log.js';
import type { HttpResult } from './routes.js';

export type Handle = (method: string, path: string) => Promise<HttpResult>;

export interface HttpServer {
  /** The port actually bound (differs from the one asked for when that was 0). */
  readonly port: number;
  /** Requests accepted and not yet answered or aborted. */
  inFlight(): number;
  /** Stops accepting connections, waits up to `graceMs` for in-flight requests, answers the rest 503, closes all connections. */
  close(graceMs: number): Promise<void>;
}

interface Pending {
  res: HttpResponse;
  head: boolean;
  /** Set on abort or once answered: from then on `res` must not be used. */
  done: boolean;
}

const statusLines = new Map<number, string>();
function statusLine(status: number): string {
  let line = statusLines.get(status);
  if (!line) statusLines.set(status, (line = `${status} ${STATUS_CODES[status] ?? ''}`.trimEnd()));
  return line;
}

function serialise(result: HttpResult): { status: number; json: string; headers?: Readonly<Record<string, string>> } {
  try {
    return { status: result.status, json: JSON.stringify(result.body), headers: result.headers };
  } catch {
    // A body JSON cannot encode (a BigInt, a cycle) is a bug in a route, not the client's fault.
    const fallback = errorResponse('internal');
    return { status: fallback.status, json: JSON.stringify(fallback.body) };
  }
}

/**
 * Writes a whole JSON response. Call only on a live `res`, inside `cork` unless still in the request callback. The
 * answer to HEAD has the status and headers and no body (a body there is read by a keep-alive client as the start
 * of its next response), and closes the connection: uWS 20.30's endWithoutBody, the one way to report GET's length
 * without its body, left the connection stalled and then dropped in a test, so the length is reported as 0.
 */
function write(res: HttpResponse, result: HttpResult, closeConnection: boolean, head: boolean): void {
  const { status, json, headers } = serialise(result);
  res.writeStatus(statusLine(status));
  res.writeHeader('Content-Type', 'application/json');
  if (headers) for (const [k, v] of Object.entries(headers)) res.writeHeader(k, v);
  if (head) res.end(undefined, true);
  else res.end(json, closeConnection);
}

export function listenHttp({ host, port, handle, log }: { host: string; port: number; handle: Handle; log: Log }): Promise<HttpServer> {
  const app: TemplatedApp = uWS.App();
  const live = new Set<Pending>();
  let closing = false;
  let onIdle: (() => void) | undefined;

  const finish = (p: Pending, result: HttpResult) => {
    if (p.done) return;
    p.done = true;
    live.delete(p);
    try {
      // While draining, ask keep-alive clients to reconnect: another gateway process takes them.
      p.res.cork(() => write(p.res, result, closing, p.head));
    } catch (err) {
      // A response uWS refuses (a bug here, not the client's doing) costs that request, never the process.
      log.error('could not write a response', { status: result.status, err });
    }
    if (live.size === 0) onIdle?.();
  };

  app.any('/*', (res, req) => {
    const method = req.getMethod().toUpperCase();
    const path = req.getUrl();
    const p: Pending = { res, head: method === 'HEAD', done: false };
    res.onAborted(() => {
      p.done = true;
      if (live.delete(p) && live.size === 0) onIdle?.();
    });
    live.add(p);
    handle(method, path).then(
      (result) => finish(p, result),
      (err: unknown) => {
        log.error('handler threw past the dispatcher', { method, path, err });
        finish(p, errorResponse('internal'));
      },
    );
  });

  return new Promise((resolve, reject) => {
    app.listen(host, port, (socket: us_listen_socket | false) => {
      if (!socket) {
        reject(new Error(`cannot listen on ${host}:${port}: the address is taken by a process without SO_REUSEPORT, or not local. Set httpHost/httpPort (SHOP_HTTP_HOST, SHOP_HTTP_PORT).`));
        return;
      }
      let listenSocket: us_listen_socket | undefined = socket;
      resolve({
        port: uWS.us_socket_local_port(socket),
        inFlight: () => live.size,
        async close(graceMs: number) {
          if (closing) return;
          closing = true;
          if (listenSocket) uWS.us_listen_socket_close(listenSocket);
          listenSocket = undefined;
          if (live.size > 0) {
            const idle = new Promise<void>((done) => (onIdle = done));
            const ac = new AbortController();
            await Promise.race([idle, delay(graceMs, undefined, { signal: ac.signal }).catch(() => {})]);
            ac.abort();
          }
          if (live.size > 0) log.warn('answering requests still in flight at shutdown with 503', { count: live.size, graceMs });
          for (const p of [...live]) finish(p, errorResponse('unavailable', 'gateway shutting down before the outcome arrived'));
          // Idle keep-alive connections would hold the process open; `close` is in uWS 20.30 but not in its typings.
          (app as TemplatedApp & { close?: () => void }).close?.();
        },
      });
    });
  });
}
