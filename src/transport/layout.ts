/**
 * The cluster's layout: what every process must agree on to route an id to the same partition (the partition count
 * and the hash). The first worker to start writes it into the control bucket (key `layout`, with a create that only
 * one can win); every later worker, gateway, controller and shopctl compares its own setting with it, and a process
 * whose setting disagrees says so and refuses: a gateway routing by another count would put one item on two
 * partitions, a worker would run partitions nobody routes to.
 *
 * A gateway has no KV rights: it reads the record with one JetStream direct get of its subject (src/auth.ts allows
 * exactly that subject).
 */
import type { KV, NatsConnection } from 'nats';
import { ConfigError, envName, type Config } from '../config.js';
import type { Log } from '../log.js';
import { names } from '../protocol.js';

/** The hash of partitioning.ts; a record naming another was written by a build that routes differently. */
export const LAYOUT_HASH = 'fnv1a';
/** The key of the record in the control bucket. */
export const LAYOUT_KEY = 'layout';
/** How long a direct get of the record may take. */
const LAYOUT_READ_TIMEOUT_MS = 5000;

export interface Layout {
  partitions: number;
  hash: string;
}

export class LayoutMismatchError extends ConfigError {
  override name = 'LayoutMismatchError';
}

/** This process's layout, from its settings. */
export function layoutOf(config: Config): Layout {
  return { partitions: config.partitions, hash: LAYOUT_HASH };
}

const text = new TextDecoder();

/** A stored record, or undefined when it is not one (garbage is treated as absent, like every KV value). */
export function parseLayout(bytes: Uint8Array): Layout | undefined {
  try {
    const v = JSON.parse(text.decode(bytes)) as Partial<Layout> | null;
    if (v && Number.isInteger(v.partitions) && v.partitions! >= 1 && typeof v.hash === 'string' && v.hash) return { partitions: v.partitions!, hash: v.hash };
  } catch {
    // not JSON: absent
  }
  return undefined;
}

/** Undefined when they agree; else the sentence a refusing process says. */
export function layoutMismatch(own: Layout, cluster: Layout, who: string, config: Config): string | undefined {
  if (own.partitions === cluster.partitions && own.hash === cluster.hash) return undefined;
  const where = `the cluster on ${config.natsUrl}${config.streamPrefix ? ` (stream prefix ${config.streamPrefix})` : ''}`;
  if (own.hash !== cluster.hash) return `${who} hashes ids with ${own.hash}, but ${where} was made with ${cluster.hash}: run the same build as the workers`;
  return (
    `${who} is set to ${own.partitions} partitions per kind, but ${where} has ${cluster.partitions}: ids would go to other partitions. ` +
    `Set partitions (${envName('partitions')}=${cluster.partitions}) like the rest of the cluster; the count is fixed for the cluster's life`
  );
}

/**
 * A worker or controller at start: writes its layout when the cluster has none (or an invalid one), else checks
 * its own against the cluster's. Throws LayoutMismatchError when they differ.
 */
export async function claimLayout(control: KV, config: Config, who: string, log: Log): Promise<Layout> {
  const own = layoutOf(config);
  const data = new TextEncoder().encode(JSON.stringify(own));
  for (;;) {
    const entry = await control.get(LAYOUT_KEY);
    const stored = entry && entry.operation === 'PUT' ? parseLayout(entry.value) : undefined;
    if (stored) {
      const why = layoutMismatch(own, stored, who, config);
      if (why) throw new LayoutMismatchError(why);
      return stored;
    }
    try {
      // Only one of several workers starting at once wins the create (or the update of a broken value).
      if (entry) {
        log.warn('the layout record of the cluster is invalid; writing this worker\'s', { key: LAYOUT_KEY });
        await control.update(LAYOUT_KEY, data, entry.revision);
      } else {
        await control.create(LAYOUT_KEY, data);
      }
      log.info('wrote the cluster\'s layout', { ...own });
      return own;
    } catch (err) {
      log.debug('another process wrote the layout first; reading it', { err });
    }
  }
}

/** The cluster's layout as anyone may read it (the gateway's one right on the bucket): undefined when there is none yet. */
export async function readLayout(nc: NatsConnection, config: Config): Promise<Layout | undefined> {
  const n = names(config.streamPrefix);
  const msg = await nc.request(`$JS.API.DIRECT.GET.KV_${n.controlBucket}.$KV.${n.controlBucket}.${LAYOUT_KEY}`, new Uint8Array(0), { timeout: LAYOUT_READ_TIMEOUT_MS });
  // 404: no such message (no layout yet); 408 and others: errors of the request.
  const code = msg.headers?.code ?? 0;
  if (code === 404) return undefined;
  if (code >= 300) throw new Error(`reading the cluster's layout failed: ${code} ${msg.headers?.description ?? ''}`);
  return parseLayout(msg.data);
}

/**
 * A gateway at start: refuses (LayoutMismatchError) when the cluster's layout differs from its own. With no layout
 * yet (no worker has started), it goes on and looks again every `recheckMs` until there is one; `onMismatch` hears
 * a disagreement found then.
 */
export async function checkLayout(nc: NatsConnection, config: Config, who: string, log: Log, recheckMs: number, onMismatch: (why: string) => void): Promise<{ stop(): void }> {
  const own = layoutOf(config);
  const check = async (): Promise<boolean> => {
    const cluster = await readLayout(nc, config);
    if (!cluster) return false;
    const why = layoutMismatch(own, cluster, who, config);
    if (why) throw new LayoutMismatchError(why);
    return true;
  };
  // No bucket yet (no responders), JetStream still starting: as good as no layout, looked at again below.
  const found = await check().catch((err: unknown) => {
    if (err instanceof LayoutMismatchError) throw err;
    log.debug('could not read the cluster layout yet', { err });
    return false;
  });
  if (found) return { stop() {} };
  log.info('the cluster has no layout yet (no worker has started); checking again until it has', { recheckMs });
  const timer = setInterval(() => {
    check().then(
      (found) => {
        if (found) clearInterval(timer);
      },
      (err: unknown) => {
        if (!(err instanceof LayoutMismatchError)) return log.debug('layout check failed; trying again', { err });
        clearInterval(timer);
        onMismatch(err.message);
      },
    );
  }, recheckMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
