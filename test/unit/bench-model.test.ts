/** The scale-out model (bench/model.ts): the fit and the predictions, from made-up scale summaries. No benchmark is run. */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { fitModel, hops, MODEL_KINDS, predict, renderModel, type ModelKind } from '../../bench/model.js';
import type { ConfigSummary } from '../../bench/scale.js';

/** A configuration's summary whose CPU per checkout of each kind is `cost(kind, hops)`. */
function summary(workers: number, partitions: number, cost: (kind: ModelKind, h: number) => number): ConfigSummary {
  const msPerCheckout = { 'generator+supervisor': 0.05, other: 0, total: 0 } as Record<string, number>;
  for (const k of MODEL_KINDS) msPerCheckout[k] = cost(k, hops(workers));
  return {
    label: `${workers}x${partitions}`,
    config: { workers, partitions },
    runs: 1,
    failed: 0,
    median: {
      checkouts: 1000,
      checkoutsPerS: 1000,
      p50Ms: 1,
      p99Ms: 2,
      maxMs: 3,
      stallS: 0,
      answered503: 0,
      atDeadline: 0,
      audit: 'PASS',
      stoppedBy: 'exhausted',
      cpu: { windowS: 1, msPerCheckout, cores: {}, processes: {}, ended: 0 },
    } as unknown as NonNullable<ConfigSummary['median']>,
  };
}

const LOCAL: Record<ModelKind, number> = { worker: 0.1, gateway: 0.06, nats: 0.03, redis: 0.02 };
const PER_HOP: Record<ModelKind, number> = { worker: 0.2, gateway: 0, nats: 0.04, redis: 0.05 };
const linear = (k: ModelKind, h: number) => LOCAL[k] + PER_HOP[k] * h;

t.test('hops: none on one worker, 1 on two, towards 2 (the two items; the user is co-located with the order)', async (t) => {
  t.equal(hops(1), 0);
  t.equal(hops(2), 1);
  t.equal(hops(4), 1.5);
  t.ok(hops(64) < 2 && hops(64) > 1.9);
});

t.test('the fit recovers costs that are linear in the hops, at the largest partition count measured on one worker and more', async (t) => {
  const configs = [
    summary(1, 2, () => 99), // not fitted: another partition count
    summary(1, 64, linear),
    summary(2, 64, linear),
    summary(4, 64, linear),
    summary(2, 128, linear), // not fitted: 128 was not measured on one worker
  ];
  const fit = fitModel(configs)!;
  t.equal(fit.partitions, 64);
  t.same(fit.fitted, ['1x64', '2x64', '4x64']);
  for (const k of MODEL_KINDS) {
    t.ok(Math.abs(fit.costs[k].local - LOCAL[k]) < 1e-9, `${k} local`);
    t.ok(Math.abs(fit.costs[k].perHop - PER_HOP[k]) < 1e-9, `${k} per hop`);
  }
});

t.test('predictions: workers bound while few, one Redis primary bounds beyond', async (t) => {
  const fit = fitModel([summary(1, 64, linear), summary(2, 64, linear)])!;
  const rows = predict(fit, [1, 2, 64]);
  const [one, two, many] = rows;
  t.ok(Math.abs(one!.workerBoundPerS - 1000 / 0.1) < 1e-6, 'one worker: 1000 ÷ its ms per checkout');
  t.equal(one!.bound, 'workers');
  t.ok(Math.abs(two!.ms.worker - (0.1 + 0.2 * 1)) < 1e-9);
  t.ok(Math.abs(two!.workerBoundPerS - 2000 / 0.3) < 1e-6);
  t.equal(many!.bound, 'redis', 'at 64 workers a single Redis primary is the bound');
  t.equal(many!.predictedPerS, many!.redisBoundPerS);
  t.ok(Math.abs(many!.cores.redis - 1) < 1e-9, 'the bound Redis keeps its one core busy');
  t.ok(Math.abs(many!.cores.total - MODEL_KINDS.reduce((s, k) => s + many!.cores[k], 0)) < 1e-9);
  t.match(renderModel(fit, rows), /Fitted to 1x64, 2x64 \(64 partitions per kind\)[\s\S]*redis/);
});

t.test('no fit without a partition count measured on one worker and on more', async (t) => {
  t.equal(fitModel([summary(1, 2, linear), summary(1, 64, linear), summary(2, 8, linear)]), undefined);
  t.equal(fitModel([]), undefined);
});

t.test('the command prints the model of a report, and says what is missing when it cannot', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'model-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const model = fileURLToPath(new URL('../../bench/model.js', import.meta.url));
  const good = join(dir, 'good.json');
  writeFileSync(good, JSON.stringify({ configs: [summary(1, 64, linear), summary(2, 64, linear), summary(4, 64, linear)] }));
  const { stdout } = await promisify(execFile)(process.execPath, [model, good]);
  t.match(stdout, /predicted\/s/);
  t.match(stdout, /^\s*64\s/m, 'a row for 64 workers');
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ configs: [summary(1, 2, linear)] }));
  const err = await promisify(execFile)(process.execPath, [model, bad]).catch((e: { code: number; stderr: string }) => e);
  t.match(err, { code: 2, stderr: /--configs 1x64,2x64,4x64/ });
});
