#!/usr/bin/env node
/**
 * The scale-out model: predicted checkouts/s against cores for 1 to 64 workers, from the CPU per checkout a `scale`
 * report measured per kind of process. `node dist/bench/model.js <scale report.json>` prints it.
 *
 * The model. A checkout's saga goes from its order's partition to the partitions of its two items and of its user.
 * The user's payment partition shares the order's worker (co-location: an order lives on its user's partition number
 * and placement puts partition p of every kind on one worker, docs/architecture.md), so two destinations are left,
 * each on another worker with probability 1 − 1/W when W workers share the partitions evenly: a checkout makes
 * h(W) = 2 (1 − 1/W) cross-worker hops on average (0 on one worker, 1 on two, 2 at the limit; before co-location
 * it was 3 (1 − 1/W)).
 * Each process kind's CPU per checkout is taken to be linear in the hops, cost(W) = local + perHop · h(W), fitted
 * (least squares) to the configurations of the report that share the largest partition count measured on one worker.
 * Then, with one core per worker (a worker is one event loop):
 * - the workers give W ÷ worker(W) checkouts per CPU-ms;
 * - one Redis primary (one thread) gives 1 ÷ redis(W): the bound of a single primary;
 * - gateways are stateless and NATS servers multi-threaded: they bound nothing in the model, they need cores
 *   (checkouts/s × their cost), which the table adds up.
 * Costs were measured where every process shares the same few cores, at the batch sizes that load gave: they hold
 * for machines that are as busy per worker; idle workers batch less (more CPU per checkout), saturated ones more.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { ConfigSummary, ScaleReport } from './scale.js';
import { fmt, textTable } from './scale.js';
import { leastSquares } from './stats.js';

/** The process kinds whose cost the model follows. */
export const MODEL_KINDS = ['worker', 'gateway', 'nats', 'redis'] as const;
export type ModelKind = (typeof MODEL_KINDS)[number];

/** Worker counts the model predicts for. */
export const MODEL_WORKERS: readonly number[] = [1, 2, 4, 8, 16, 32, 64];

/** Destinations of a checkout's saga that can be on another worker: its 2 items (the user is co-located). */
export const REMOTE_DESTINATIONS = 2;

/** Cross-worker destinations a checkout's saga has on average with `workers` workers. */
export const hops = (workers: number) => REMOTE_DESTINATIONS * (1 - 1 / workers);

/** CPU ms per checkout of one process kind: `local` on one worker, plus `perHop` per cross-worker hop. */
export interface KindCost {
  local: number;
  perHop: number;
}

export interface ModelFit {
  /** The partition count of the configurations fitted. */
  partitions: number;
  /** Their labels (`1x64`, `2x64`, ...). */
  fitted: string[];
  costs: Record<ModelKind, KindCost>;
}

export interface ModelRow {
  workers: number;
  hops: number;
  /** CPU ms per checkout, per kind, at this many workers. */
  ms: Record<ModelKind, number>;
  /** What W workers on a core each can answer, and one Redis primary. */
  workerBoundPerS: number;
  redisBoundPerS: number;
  /** The lower of the two, and which it is. */
  predictedPerS: number;
  bound: 'workers' | 'redis';
  /** Cores busy at the predicted rate, per kind and in all. */
  cores: Record<ModelKind, number> & { total: number };
}

/** Least-squares line through (hops, ms) points; a single point gives a flat line. */
function fitLine(points: readonly [number, number][]): KindCost {
  const { intercept, slope } = leastSquares(points);
  return { local: intercept, perHop: slope };
}

/**
 * The fit over the configurations at the largest partition count that was measured on one worker and on more:
 * undefined when the report has no such pair.
 */
export function fitModel(configs: readonly ConfigSummary[]): ModelFit | undefined {
  const measured = configs.filter((c) => c.median?.cpu);
  const counts = [...new Set(measured.map((c) => c.config.partitions))].sort((a, b) => b - a);
  for (const partitions of counts) {
    const at = measured.filter((c) => c.config.partitions === partitions);
    if (!at.some((c) => c.config.workers === 1) || !at.some((c) => c.config.workers > 1)) continue;
    const costs = Object.fromEntries(
      MODEL_KINDS.map((k) => [k, fitLine(at.map((c) => [hops(c.config.workers), c.median!.cpu!.msPerCheckout[k]] as [number, number]))]),
    ) as Record<ModelKind, KindCost>;
    return { partitions, fitted: at.map((c) => c.label), costs };
  }
  return undefined;
}

/** The predictions for each worker count. */
export function predict(fit: ModelFit, workerCounts: readonly number[] = MODEL_WORKERS): ModelRow[] {
  return workerCounts.map((workers) => {
    const h = hops(workers);
    const ms = Object.fromEntries(MODEL_KINDS.map((k) => [k, Math.max(0, fit.costs[k].local + fit.costs[k].perHop * h)])) as Record<ModelKind, number>;
    const workerBoundPerS = (1000 * workers) / ms.worker;
    const redisBoundPerS = ms.redis > 0 ? 1000 / ms.redis : Infinity;
    const predictedPerS = Math.min(workerBoundPerS, redisBoundPerS);
    const cores = Object.fromEntries(MODEL_KINDS.map((k) => [k, (predictedPerS * ms[k]) / 1000])) as Record<ModelKind, number>;
    const total = MODEL_KINDS.reduce((s, k) => s + cores[k], 0);
    return { workers, hops: h, ms, workerBoundPerS, redisBoundPerS, predictedPerS, bound: workerBoundPerS <= redisBoundPerS ? 'workers' : 'redis', cores: { ...cores, total } };
  });
}

export function renderModel(fit: ModelFit, rows: readonly ModelRow[]): string {
  const costs = textTable({
    head: ['process', 'local ms/checkout', 'ms per cross-worker hop'],
    rows: MODEL_KINDS.map((k) => [k, fmt(fit.costs[k].local, 3), fmt(fit.costs[k].perHop, 3)]),
  });
  const table = textTable({
    head: ['workers', 'hops', 'worker ms', 'redis ms', 'workers bound/s', 'one Redis bound/s', 'predicted/s', 'bound', 'cores (w+g+n+r)'],
    rows: rows.map((r) => [
      String(r.workers),
      fmt(r.hops, 2),
      fmt(r.ms.worker, 3),
      fmt(r.ms.redis, 3),
      fmt(r.workerBoundPerS, 0),
      fmt(r.redisBoundPerS, 0),
      fmt(r.predictedPerS, 0),
      r.bound,
      `${fmt(r.cores.total, 1)} (${fmt(r.cores.worker, 1)}+${fmt(r.cores.gateway, 1)}+${fmt(r.cores.nats, 1)}+${fmt(r.cores.redis, 1)})`,
    ]),
  });
  return `Fitted to ${fit.fitted.join(', ')} (${fit.partitions} partitions per kind): CPU per checkout = local + per hop × hops\n${costs}\n\n${table}\n`;
}

async function main(argv: string[]): Promise<number> {
  const file = argv[0];
  if (!file || argv.length > 1) {
    process.stderr.write('usage: node dist/bench/model.js <report.json of a scale run>\n');
    return 2;
  }
  const report = JSON.parse(await readFile(file, 'utf8')) as ScaleReport;
  const fit = fitModel(report.configs ?? []);
  if (!fit) {
    process.stderr.write(`${file}: no partition count measured both on one worker and on more, with CPU figures: run \`npm run bench -- scale\` with, say, --configs 1x64,2x64,4x64\n`);
    return 2;
  }
  process.stdout.write(renderModel(fit, predict(fit)));
  return 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exitCode = await main(process.argv.slice(2));
