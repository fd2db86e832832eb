/** The gateway role: HTTP on uWebSockets.js in front of the ShopClient. Stateless but for its in-flight requests. */
import type { NatsConnection } from 'nats';
import type { Config } from '../config.js';
import type { Log } from '../log.js';
import type { Registry } from 'prom-client';
import { createGatewayMetrics } from '../monitoring/metrics.js';
import { createShopClient, type ShopClient } from '../transport/shop-client.js';
import { apiRoutes, createDispatcher, createRouter } from './routes.js';
import { listenHttp, type HttpServer } from './uws.js';

/** Part of shutdownGraceMs kept back from the HTTP drain, for closing the client and draining NATS before the supervisor's kill. */
const CLOSE_MARGIN_MS = 1000;

export type GatewayOptions = { config: Config; log: Log } & (
  | { nc: NatsConnection; client?: undefined }
  /** With a client given (tests), the gateway does not close the client: its owner does. */
  | { nc?: NatsConnection; client: ShopClient }
);

export interface Gateway {
  /** The HTTP port actually bound (config.httpPort, or the one the OS chose for 0). */
  readonly port: number;
  /** Prometheus metrics: requests by route and status, latency, in flight. */
  readonly registry: Registry;
  /** Stops accepting, lets in-flight requests finish (bounded by shutdownGraceMs), then closes its client. */
  close(): Promise<void>;
}

export async function createGateway(opts: GatewayOptions): Promise<Gateway> {
  const { config, log } = opts;
  let client: ShopClient;
  let ownsClient: boolean;
  if (opts.client) {
    client = opts.client;
    ownsClient = false;
  } else {
    client = createShopClient({ nc: opts.nc, config, log });
    ownsClient = true;
  }

  const routes = apiRoutes({ client, config });
  const router = createRouter(routes);
  const metrics = createGatewayMetrics(() => client.inFlight());
  let server: HttpServer;
  try {
    server = await listenHttp({ host: config.httpHost, port: config.httpPort, handle: createDispatcher(router, log, metrics.request), log });
  } catch (err) {
    if (ownsClient) await client.close();
    throw err;
  }
  log.info('listening', { host: config.httpHost, port: server.port });

  let closed: Promise<void> | undefined;
  return {
    port: server.port,
    registry: metrics.registry,
    close() {
      closed ??= (async () => {
        await server.close(Math.max(0, config.shutdownGraceMs - CLOSE_MARGIN_MS));
        if (ownsClient) await client.close();
        log.info('closed');
      })();
      return closed;
    },
  };
}
