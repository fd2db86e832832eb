/**
 * Admin HTTP of one process, on a loopback port: /healthz (the process runs), /readyz (it does its job now:
 * a worker runs every partition the placement gives it and reaches NATS and Redis, a gateway listens and reaches
 * NATS; see src/monitoring/health.ts), /metrics (Prometheus).
 */
import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import type { Log } from '../log.js';

export interface Probe {
  ok: boolean;
  /** Said in the body, for people. */
  detail?: string;
}

export interface AdminHttpOptions {
  host: string;
  /** 0: any free port. */
  port: number;
  /** The registry to serve; undefined while the process is still starting. */
  registry: () => Registry | undefined;
  health: () => Probe;
  ready: () => Probe;
  log: Log;
}

export interface AdminHttp {
  readonly port: number;
  close(): Promise<void>;
}

export async function startAdminHttp({ host, port, registry, health, ready, log }: AdminHttpOptions): Promise<AdminHttp> {
  const probe = (p: Probe) => ({ status: p.ok ? 200 : 503, body: `${p.ok ? 'ok' : 'not ok'}${p.detail ? `: ${p.detail}` : ''}\n` });
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const send = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'only GET\n');
    if (path === '/healthz' || path === '/readyz') {
      let result: { status: number; body: string };
      try {
        result = probe(path === '/healthz' ? health() : ready());
      } catch (err) {
        result = { status: 503, body: `not ok: ${(err as Error).message}\n` };
      }
      return send(result.status, result.body);
    }
    if (path === '/metrics') {
      const r = registry();
      if (!r) return send(503, 'starting\n');
      r.metrics().then(
        (text) => send(200, text, r.contentType),
        (err: Error) => {
          log.error('metrics collection failed', { err });
          send(500, `metrics collection failed: ${err.message}\n`);
        },
      );
      return;
    }
    send(404, 'admin endpoints: /healthz /readyz /metrics\n');
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  log.info('admin http listening', { url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}` });
  return {
    port: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
