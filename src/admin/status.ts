/**
 * What `shopctl status` shows, read straight from the KV buckets and the streams (no controller needed, so it
 * also works while there is no leader): live workers, and every partition's owner, epoch and lag.
 */
import type { JetStreamManager, NatsConnection } from 'nats';
import type { Config, Kind } from '../config.js';
import type { Fault } from '../faults.js';
import { names } from '../protocol.js';
import { heartbeatOf, openBuckets } from '../placement/membership.js';
import { kvValues, parsePlacementKey, placementKey, type Assignment, type Heartbeat } from '../placement/placement.js';
import { LAYOUT_KEY, layoutMismatch, layoutOf, parseLayout, type Layout } from '../transport/layout.js';

/** The shape of `shopctl status --json`, exactly. */
export interface Status {
  workers: { id: string; pid: number; host: string; partitions: number }[];
  partitions: {
    kind: Kind;
    partition: number;
    owner: string | null;
    epoch: number;
    lag: number;
    /** What it is doing: running; moving (placed, not yet run at its epoch); unplaced; owner dead; or held but not serving: restarting, refused. */
    state: PartitionState;
    /** Messages of this partition in the dead-letter stream. */
    deadLetters: number;
  }[];
}

export type PartitionState = 'running' | 'moving' | 'unplaced' | 'owner dead' | 'restarting' | 'refused';

/** More than the JSON carries, for the table. */
export interface StatusDetail {
  status: Status;
  leader: string | null;
  workers: Map<string, { heartbeat: Heartbeat; ageMs: number }>;
  /** Partitions whose owner does not (yet) run them at the placement epoch: moving, or waiting for a dead owner's lease. */
  moving: Set<string>;
  /** The dead-letter stream's name. */
  deadLetterStream: string;
  /**
   * The partitions per kind shown: the cluster's (its layout record), or this process's setting when the cluster
   * has none yet; and what to say when this process's setting differs from the cluster's.
   */
  partitions: number;
  note?: string;
}

/**
 * The keys of a bucket, from one stream-info request (its subjects). Not kv.keys(): on nats-server 2.9 that
 * consumer can wait forever once entries expire by the bucket's TTL (nats-server issue 3481), and the workers
 * bucket expires entries by design.
 */
async function keysOf(jsm: JetStreamManager, bucket: string): Promise<string[]> {
  const prefix = `$KV.${bucket}.`;
  const info = await jsm.streams.info(`KV_${bucket}`, { subjects_filter: `${prefix}>` });
  return Object.keys(info.state.subjects ?? {}).map((subject) => subject.slice(prefix.length));
}

/**
 * Values in the buckets that are not what they should be are left out (as if absent); `fault` hears each (shopctl
 * prints them). The partitions are the cluster's (its layout record); `note` says when `who`'s setting differs.
 */
export async function readStatus(nc: NatsConnection, config: Config, fault: Fault = () => {}, who = 'this process'): Promise<StatusDetail> {
  const b = await openBuckets(nc.jetstream(), config);
  const jsm = await nc.jetstreamManager();
  const n = names(config.streamPrefix);
  const now = Date.now();
  const workers = new Map<string, { heartbeat: Heartbeat; ageMs: number }>();
  for (const key of await keysOf(jsm, n.workersBucket)) {
    const e = await b.workers.get(key);
    if (!e || e.operation !== 'PUT') continue;
    const ageMs = now - e.created.getTime();
    const heartbeat = ageMs <= config.workerLeaseMs ? heartbeatOf(e, fault) : undefined;
    if (heartbeat) workers.set(key, { heartbeat, ageMs });
  }
  const placement = new Map<string, Assignment>();
  for (const key of await keysOf(jsm, n.placementBucket)) {
    const e = await b.placement.get(key);
    const a = e && e.operation === 'PUT' && parsePlacementKey(key) ? kvValues.assignment(e.value, fault, key) : undefined;
    if (a) placement.set(key, a);
  }
  const layoutEntry = await b.control.get(LAYOUT_KEY);
  const cluster: Layout | undefined = layoutEntry && layoutEntry.operation === 'PUT' ? parseLayout(layoutEntry.value) : undefined;
  const partitionCount = cluster?.partitions ?? config.partitions;
  const differs = cluster && layoutMismatch(layoutOf(config), cluster, who, config);
  const note = !cluster
    ? `the cluster has no layout record yet (no worker has started): showing ${who}'s setting of ${config.partitions} partitions per kind`
    : differs
      ? `${differs}. Shown: the cluster's ${cluster.partitions}`
      : undefined;
  const leaderEntry = await b.control.get('leader');
  const leader = (leaderEntry && leaderEntry.operation === 'PUT' ? kvValues.leader(leaderEntry.value, fault, 'leader')?.id : undefined) ?? null;

  // Lag of a partition that nobody runs right now: the commands of its subject still in the stream (trimmed up to the last owner's cursor).
  const inStream = new Map<string, number>();
  for (const kind of config.kinds) {
    try {
      const info = await jsm.streams.info(n.stream(kind), { subjects_filter: n.cmd(kind, 0).replace(/\.0$/, '.*') });
      for (const [subject, count] of Object.entries(info.state.subjects ?? {})) inStream.set(subject, count);
    } catch {
      // no stream yet: nothing waits
    }
  }

  const held = new Map<string, { worker: string; epoch: number; lag: number; trouble?: 'restarting' | 'refused' }>();
  for (const [id, { heartbeat }] of workers) for (const h of heartbeat.held) held.set(placementKey(h.k, h.p), { worker: id, epoch: h.e, lag: h.lag, ...(h.t ? { trouble: h.t } : {}) });

  const dead = new Map<string, number>();
  try {
    const info = await jsm.streams.info(n.deadLetterStream, { subjects_filter: n.deadLetter('stock', 0).replace(/stock\.0$/, '>') });
    for (const [subject, count] of Object.entries(info.state.subjects ?? {})) dead.set(subject, count);
  } catch {
    // no dead-letter stream yet: no dead letters
  }

  const partitions: Status['partitions'] = [];
  const moving = new Set<string>();
  for (const kind of config.kinds) {
    for (let p = 0; p < partitionCount; p++) {
      const key = placementKey(kind, p);
      const a = placement.get(key);
      const h = held.get(key);
      const running = a !== undefined && h !== undefined && h.worker === a.worker && h.epoch === a.epoch;
      if (!running || h.trouble) moving.add(key);
      const state: PartitionState = !a ? 'unplaced' : !workers.has(a.worker) ? 'owner dead' : !running ? 'moving' : (h.trouble ?? 'running');
      partitions.push({ kind, partition: p, owner: a?.worker ?? null, epoch: a?.epoch ?? 0, lag: running ? h.lag : (inStream.get(n.cmd(kind, p)) ?? 0), state, deadLetters: dead.get(n.deadLetter(kind, p)) ?? 0 });
    }
  }
  const count = new Map<string, number>();
  for (const p of partitions) if (p.owner) count.set(p.owner, (count.get(p.owner) ?? 0) + 1);
  const status: Status = {
    workers: [...workers.values()]
      .map(({ heartbeat: hb }) => ({ id: hb.id, pid: hb.pid, host: hb.host, partitions: count.get(hb.id) ?? 0 }))
      .sort((x, y) => (x.id < y.id ? -1 : 1)),
    partitions,
  };
  return { status, leader, workers, moving, deadLetterStream: n.deadLetterStream, partitions: partitionCount, ...(note ? { note } : {}) };
}

/** Left-aligned columns, two spaces apart, with a header row. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

export function formatStatus({ status, leader, workers, moving, deadLetterStream: deadLetterStreamHint, partitions }: StatusDetail): string {
  const out: string[] = [];
  out.push(
    table(
      ['WORKER', 'HOST', 'PID', 'PARTITIONS', 'ADMIN', 'STATE'],
      status.workers.map((w) => {
        const hb = workers.get(w.id)!.heartbeat;
        const state = [w.id === leader ? 'leader' : '', hb.draining ? 'draining' : ''].filter(Boolean).join(',') || '-';
        return [w.id, w.host, w.pid, w.partitions, hb.adminPort ? `127.0.0.1:${hb.adminPort}` : '-', state];
      }),
    ),
  );
  if (status.workers.length === 0) out.push('(no live worker)');
  out.push('');
  out.push(table(['KIND', 'PARTITION', 'OWNER', 'EPOCH', 'LAG', 'DEAD', 'STATE'], status.partitions.map((p) => [p.kind, p.partition, p.owner ?? '-', p.epoch, p.lag, p.deadLetters, p.state])));
  const running = status.partitions.length - moving.size;
  out.push('');
  out.push(`${running}/${status.partitions.length} partitions running at their placement epoch (${partitions} per kind); leader: ${leader ?? 'none'}`);
  const deadLetters = status.partitions.reduce((sum, p) => sum + p.deadLetters, 0);
  if (deadLetters > 0) out.push(`${deadLetters} dead letters (messages a partition could not apply): nats stream view ${deadLetterStreamHint}`);
  const troubled = status.partitions.filter((p) => p.state === 'restarting' || p.state === 'refused');
  if (troubled.length > 0) out.push(`not serving: ${troubled.map((p) => `${p.kind}.${p.partition} ${p.state}`).join(', ')} (the owner's log and /readyz say why)`);
  return out.join('\n');
}
