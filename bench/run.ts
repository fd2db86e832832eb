#!/usr/bin/env node
/**
 * `npm run bench -- <scenario> [options]`: the project's load generator. Optionally starts the local stack,
 * runs the scenario's batch_init, drives the load (closed or open loop), audits conservation where the
 * scenario allows it, prints a summary and writes bench/out/<timestamp>-<scenario>/. `scale` runs checkout-fresh
 * once per stack configuration instead (bench/scale-run.ts).
 * Exit status: 0 done, 1 audit FAIL, 2 bad usage or the run could not start.
 */
import { mkdir } from 'node:fs/promises';
import type { Client, Dispatcher } from 'undici';
import { join, relative, resolve } from 'node:path';
import { auditConservation, verdict } from './audit.js';
import { commitFigures } from './commit-counts.js';
import { startLoad, type LoadModel, type LoadRun } from './engine.js';
import { createConnections, primeOrders, readAuditInput, runSetup, warmConnections } from './http.js';
import { HelpShown, parseInvocation, SCALE, UsageError, type BenchOptions, type Invocation } from './options.js';
import { createProgress, type Progress } from './progress.js';
import { machine, reportDirName, writeReport, type Report } from './report.js';
import { createScenario, primer, PRIME_REQUESTS, PRIME_SAGAS, sagaPrimer, type Scenario } from './scenarios.js';
import { seededRandom } from '../src/actors/random.js';
import type { Stack } from './stack.js';
import { round, Stats } from './stats.js';

/** A second Ctrl-C sooner than this after the first is the same keypress (npm forwards it again). */
const SIGNAL_REPEAT_MIN_MS = 1000;
/** wdm-stress: each virtual user checks out once a second. */
const WDM_PACE_MS = 1000;
const PROGRESS_UPDATE_MS = 250;

const note = (line: string) => process.stderr.write(line + '\n');

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function loadModel(o: BenchOptions): { model: LoadModel; poolConnections: number; text: string } {
  if (o.rate !== undefined) {
    return {
      model: { kind: 'open', rate: o.rate, maxOutstanding: o.maxOutstanding },
      poolConnections: o.connections,
      text: `open loop at ${o.rate} req/s over ${o.connections} connections, at most ${o.maxOutstanding} outstanding`,
    };
  }
  if (o.scenario === 'wdm-stress') {
    const connections = Math.min(o.connections, o.vus);
    return {
      model: { kind: 'closed', concurrency: o.vus, paceMs: o.unthrottled ? 0 : WDM_PACE_MS },
      poolConnections: connections,
      text: o.unthrottled
        ? `${o.vus} virtual users back to back (unthrottled) over ${connections} connections`
        : `${o.vus} virtual users, each one checkout a second (latency from the intended time), over ${connections} connections`,
    };
  }
  return { model: { kind: 'closed', concurrency: o.connections, paceMs: 0 }, poolConnections: o.connections, text: `closed loop, ${o.connections} connections` };
}

function progressMode(o: BenchOptions): 'bar' | 'lines' | 'off' {
  if (!o.progress) return 'off';
  return process.stderr.isTTY ? 'bar' : 'lines';
}

/** What the bar counts: requests when the run has a known number of them, else seconds. */
function progressScale(o: BenchOptions, scenario: Scenario): { total: number; unit: string; value: (run: LoadRun, elapsedMs: number) => number } {
  const count = Math.min(scenario.total ?? Infinity, o.requests ?? Infinity);
  if (Number.isFinite(count)) return { total: count, unit: 'requests', value: (run) => run.issued - run.inFlight };
  const seconds = Math.round(((o.durationMs ?? 0) + o.warmupMs) / 1000);
  return { total: seconds, unit: 's', value: (_run, elapsedMs) => Math.min(seconds, Math.floor(elapsedMs / 1000)) };
}

/**
 * Runs the load loop on requests that change nothing, not measured (see PRIME_REQUESTS), then on refused checkouts
 * of orders of the primer's own (see sagaPrimer); its setup timing.
 */
async function prime(o: BenchOptions, pool: Dispatcher, clients: Client[], concurrency: number): Promise<{ what: string; ms: number }> {
  const t = performance.now();
  const loop = async (scenario: Scenario, requests: number) => {
    const stats = new Stats(scenario.kinds);
    const run = startLoad({ dispatcher: pool, connections: clients, scenario, stats, model: { kind: 'closed', concurrency, paceMs: 0 }, requests, timeoutMs: o.timeoutMs });
    const { issued } = await run.done;
    // An answer the primer did not expect means the system changed something, or failed: say so, measure anyway.
    const { errors } = stats.summary();
    if (errors > 0) note(`setup: the primer had ${errors} unexpected answers (see the scenario's primer in bench/scenarios.ts)`);
    return issued;
  };
  const issued = await loop(primer(o), PRIME_REQUESTS);
  const orders = await primeOrders(pool, o.timeoutMs, seededRandom(o.seed + 1));
  const sagas = await loop(sagaPrimer(o, orders), PRIME_SAGAS);
  const step = { what: `primed: ${issued} requests that change nothing and ${sagas} refused checkouts of ${orders.length} orders of its own (not measured)`, ms: Math.round(performance.now() - t) };
  note(`setup: ${step.what}: ${step.ms} ms`);
  return step;
}

async function main(argv: string[]): Promise<number> {
  let invocation: Invocation;
  try {
    invocation = parseInvocation(argv);
  } catch (err) {
    if (err instanceof HelpShown) {
      process.stdout.write(err.text);
      return 0;
    }
    if (err instanceof UsageError) {
      note(`bench: ${err.message}\nRun \`npm run bench -- --help\` for the scenarios and options.`);
      return 2;
    }
    throw err;
  }
  if (invocation.scenario === SCALE) {
    const { runScale } = await import('./scale-run.js');
    return runScale(invocation, ['npm run bench --', ...argv.map(shellQuote)].join(' '));
  }
  const o: Readonly<BenchOptions> = invocation;
  const startedAt = new Date();
  const dir = resolve(o.outDir, reportDirName(o.scenario, startedAt));
  await mkdir(dir, { recursive: true });
  const progress: Progress = createProgress(progressMode(o));

  // Ctrl-C: stop the load and still report (and stop the stack); a second one kills everything.
  let run: LoadRun | undefined;
  let interrupted = false;
  let stack: Stack | undefined;
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now();
    if (!firstSignalAt) {
      firstSignalAt = now;
      interrupted = true;
      note(`\n${signal}: stopping the load; requests in flight are awaited, then the report is written (again to abort at once)`);
      run?.stop('interrupted');
      return;
    }
    if (now - firstSignalAt < SIGNAL_REPEAT_MIN_MS) return;
    progress.stop();
    note(`${signal} again: aborting`);
    stack?.kill();
    process.exit(130);
  };
  for (const s of ['SIGINT', 'SIGTERM'] as const) process.on(s, onSignal);

  let url = o.url;
  if (o.start) {
    const { startStack } = await import('./stack.js');
    stack = await startStack(join(dir, 'stack.log'), note);
    url = stack.url;
  }
  const scenario = createScenario(o);
  const { model, poolConnections, text: modelText } = loadModel(o);
  const { pool, clients } = createConnections(url, poolConnections, o.timeoutMs);
  try {
    const setup = await runSetup(pool, scenario.setup, note);
    note(`setup: ${poolConnections} connections opened in ${await warmConnections(pool, poolConnections, o.timeoutMs)} ms`);
    if (o.prime) setup.push(await prime(o, pool, clients, poolConnections));
    const stats = new Stats(scenario.kinds);
    const scale = progressScale(o, scenario);
    let lastFigures = { rps: 0, p99Ms: 0, errors: 0 };
    // Redis's counts around the load (bench/commit-counts.ts): read before it starts and once it is over.
    const countsBefore = stack ? await stack.commitCounts().catch(noCounts) : undefined;
    note(`load: ${o.scenario}, ${modelText}${o.warmupMs ? `, ${o.warmupMs / 1000} s warm-up` : ''}${o.durationMs !== undefined ? `, for ${o.durationMs / 1000} s` : ''}${o.requests !== undefined ? `, at most ${o.requests} requests` : ''}`);
    const t0 = performance.now();
    run = startLoad({
      dispatcher: pool,
      connections: clients,
      scenario,
      stats,
      model,
      durationMs: o.durationMs,
      warmupMs: o.warmupMs,
      requests: o.requests,
      timeoutMs: o.timeoutMs,
      onSecond: (p) => (lastFigures = { rps: p.rps, p99Ms: p.p99Ms, errors: stats.errors }),
    });
    if (interrupted) run.stop('interrupted');
    progress.start(o.scenario, scale.total, scale.unit);
    const ticker = setInterval(() => progress.update(scale.value(run!, performance.now() - t0), lastFigures), PROGRESS_UPDATE_MS);
    const result = await run.done;
    clearInterval(ticker);
    progress.update(scale.value(run, performance.now() - t0), lastFigures);
    progress.stop();

    const countsAfter = countsBefore && stack ? await stack.commitCounts().catch(noCounts) : undefined;
    const summary = stats.summary();
    const elapsedS = result.elapsedMs / 1000;
    // A warm-up's requests are in Redis's counts and not in the summary's: no figures then.
    const commits = countsBefore && countsAfter && !o.warmupMs ? commitFigures(countsBefore, countsAfter, summary.completed) : undefined;
    const report: Report = {
      scenario: o.scenario,
      command: ['npm run bench --', ...argv.map(shellQuote)].join(' '),
      startedAt: startedAt.toISOString(),
      machine: machine(),
      target: { url, startedByBench: o.start },
      model: modelText,
      options: o,
      setup,
      load: {
        ...summary,
        elapsedS: round(elapsedS, 3),
        stoppedBy: result.stoppedBy,
        issued: result.issued,
        throughputPerS: round(summary.completed / elapsedS, 1),
        okPerS: round(summary.ok / elapsedS, 1),
      },
      audit: { skipped: 'not run' },
      ...(commits ? { commits } : {}),
    };
    printSummary(report);

    let exitCode = 0;
    if (!scenario.audit) {
      report.audit = { skipped: whyNoAudit(o) };
    } else {
      const plan = scenario.audit;
      const reads = plan.orders + plan.items + plan.users;
      note(`audit: reading back ${plan.orders} orders, ${plan.items} items, ${plan.users} users, ${o.auditConcurrency} at a time`);
      const t = performance.now();
      let done = 0;
      progress.start('audit', reads, 'reads', false);
      const ticker = setInterval(() => progress.update(done), PROGRESS_UPDATE_MS);
      const input = await readAuditInput(pool, plan, o.auditConcurrency, o.timeoutMs, () => done++);
      clearInterval(ticker);
      progress.update(done);
      progress.stop();
      const result = auditConservation(input);
      report.audit = { ...result, verdict: verdict(result), readMs: Math.round(performance.now() - t) };
      process.stdout.write(`audit: ${report.audit.verdict}\n`);
      for (const example of result.examples) process.stdout.write(`  ${example}\n`);
      if (!result.pass) exitCode = 1;
    }
    await writeReport(dir, report);
    process.stdout.write(`report: ${relative(process.cwd(), dir) || dir}/ (report.md, report.json, chart.svg${o.start ? ', stack.log' : ''})\n`);
    return exitCode;
  } finally {
    await pool.close();
    await Promise.all(clients.filter((c) => !c.closed).map((c) => c.close())); // any the pool never took
    if (stack) {
      note('stop: stopping the local stack (gateways, workers, redis, nats)');
      await stack.stop();
    }
  }
}

function whyNoAudit(o: BenchOptions): string {
  if (!o.init) return '--no-init: the starting stock and credit are unknown';
  if (o.scenario === 'reads') return 'reads change nothing';
  if (o.scenario === 'mixed') return 'mixed creates items, users and orders whose ids the audit does not follow';
  return '--no-audit';
}

function printSummary(r: Report): void {
  const l = r.load;
  const lat = l.latency;
  const out: string[] = [];
  out.push(
    `${r.scenario}: ${l.completed} requests in ${l.elapsedS.toFixed(1)} s = ${l.throughputPerS} req/s (2xx ${l.okPerS}/s); ` +
      `2xx ${l.ok}, expected refusals ${l.expected}, errors ${l.errors}${l.dropped ? `, dropped ${l.dropped}` : ''}; stopped: ${l.stoppedBy}`,
  );
  out.push(`latency ms: p50 ${lat.p50Ms}  p90 ${lat.p90Ms}  p99 ${lat.p99Ms}  p99.9 ${lat.p999Ms}  max ${lat.maxMs}  (mean ${lat.meanMs})`);
  if (l.byKind.length > 1) {
    for (const k of l.byKind) out.push(`  ${k.name.padEnd(13)} ${String(k.latency.count).padStart(8)}  p50 ${k.latency.p50Ms}  p99 ${k.latency.p99Ms}  max ${k.latency.maxMs}  errors ${k.errors}`);
  }
  out.push(`status: ${Object.entries(l.byStatus).map(([s, n]) => `${s === '0' ? 'no response' : s} x${n}`).join(', ') || 'none'}`);
  if (Object.keys(l.byCode).length > 0) out.push(`codes: ${Object.entries(l.byCode).map(([c, n]) => `${c} x${n}`).join(', ')}`);
  if (r.commits) out.push(`redis: ${r.commits.commitsPerRequest} commits and ${r.commits.partitionBatchesPerRequest} partition batches per request`);
  process.stdout.write(out.join('\n') + '\n');
}

/** Redis's counts could not be read: said, and the run goes on without them. */
function noCounts(err: unknown): undefined {
  note(`redis: no commit counts (${err instanceof Error ? err.message : String(err)})`);
  return undefined;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    note(`bench: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(2);
  },
);
