/**
 * `npm run bench -- scale`: checkout-fresh --start once per configuration, one after the other, each as a
 * child process of its own (`node dist/bench/run.js checkout-fresh --start ...` with SHOP_WORKER_PROCESSES
 * and SHOP_PARTITIONS set), so every run starts from a fresh process and a fresh stack. While a run's load is
 * on, the CPU of its whole process tree is read from /proc. The figures and tables: bench/scale.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config.js';
import { fitModel, predict, renderModel } from './model.js';
import { configLabel, type ScaleConfig, type ScaleOptions } from './options.js';
import { clockTicksPerS, cpuDelta, procAvailable, snapshotTree, type TreeSnapshot } from './proc.js';
import { machine, reportDirName, type Report } from './report.js';
import { cpuFigures, fmt, ratioTable, renderScaleMarkdown, renderSummary, runFigures, schedule, summarizeConfigs, type CpuFigures, type ScaleReport, type ScaleRun } from './scale.js';

/** run.js beside this module: the same build runs each configuration. */
const RUN_JS = fileURLToPath(new URL('./run.js', import.meta.url));
/** The run's note on stderr just before its load starts (run.ts), and its summary line on stdout once the load ends. */
const LOAD_START_LINE = /^load: /;
const LOAD_END_LINE = /^checkout-fresh: \d+ requests in /;
/** Where the run wrote its report, relative to the working directory both processes share. */
const REPORT_LINE = /^report: (.+?)\/ \(/;
/** A run's last lines kept for the error message of a run that gave no report. */
const TAIL_LINES_MAX = 20;
/** A second Ctrl-C sooner than this after the first is the same keypress (the terminal and npm both send it). */
const SIGNAL_REPEAT_MIN_MS = 1000;

const note = (line: string) => process.stderr.write(line + '\n');

/** The command line of one configuration's run (after `node run.js`). */
export function childArgs(o: ScaleOptions, outDir: string): string[] {
  return [
    'checkout-fresh',
    '--start',
    '--orders',
    String(o.orders),
    '--connections',
    String(o.connections),
    '--seed',
    String(o.seed),
    '--out',
    outDir,
    '--no-progress',
    ...(o.prime ? [] : ['--no-prime']),
  ];
}

/** What each configuration sets on top of the environment the bench was started with. */
export function childEnv(c: ScaleConfig): Record<string, string> {
  return { SHOP_WORKER_PROCESSES: String(c.workers), SHOP_PARTITIONS: String(c.partitions) };
}

/** The SHOP_* settings every run inherits: all but the two a configuration sets. */
export function inheritedEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const perConfig = Object.keys(childEnv({ workers: 1, partitions: 1 }));
  return Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[0].startsWith('SHOP_') && !perConfig.includes(e[0]) && e[1] !== undefined));
}

interface Measure {
  deadlineMs: number;
  /** undefined: no /proc here, no CPU figures. */
  ticksPerS: number | undefined;
  forward: boolean;
}

/** The report directory a run made under `runDir`, when its `report:` line was not seen. */
async function findReportDir(runDir: string): Promise<string | undefined> {
  const entries = await readdir(runDir, { withFileTypes: true });
  const dir = entries.find((e) => e.isDirectory() && existsSync(join(runDir, e.name, 'report.json')));
  return dir && join(runDir, dir.name);
}

/** Runs one configuration as a child process; resolves once it has exited, with its figures or why there are none. */
async function runOne(o: ScaleOptions, round: number, config: ScaleConfig, runDir: string, m: Measure, started: (child: ChildProcess) => void): Promise<ScaleRun> {
  const label = configLabel(config);
  await mkdir(runDir, { recursive: true });
  const log = createWriteStream(join(runDir, 'output.log'));
  const child = spawn(process.execPath, [RUN_JS, ...childArgs(o, runDir)], { env: { ...process.env, ...childEnv(config) }, stdio: ['ignore', 'pipe', 'pipe'] });
  started(child);
  const tail: string[] = [];
  let before: TreeSnapshot | undefined;
  let after: TreeSnapshot | undefined;
  let reportDir: string | undefined;
  let snapshotError: string | undefined;
  const snapshot = (): TreeSnapshot | undefined => {
    if (m.ticksPerS === undefined || child.pid === undefined) return undefined;
    try {
      return snapshotTree(child.pid);
    } catch (err) {
      snapshotError = `reading /proc: ${err instanceof Error ? err.message : String(err)}`;
      return undefined;
    }
  };
  const onLine = (line: string, stream: 'stdout' | 'stderr') => {
    log.write(`${stream === 'stderr' ? 'err' : 'out'}| ${line}\n`);
    tail.push(line);
    if (tail.length > TAIL_LINES_MAX) tail.shift();
    if (m.forward) note(`[r${round} ${label}] ${line}`);
    if (stream === 'stderr' && !before && LOAD_START_LINE.test(line)) before = snapshot();
    if (stream === 'stdout' && before && !after && LOAD_END_LINE.test(line)) after = snapshot();
    const report = stream === 'stdout' ? REPORT_LINE.exec(line) : null;
    if (report) reportDir = resolve(report[1]!);
  };
  const closed = Promise.all(
    (['stdout', 'stderr'] as const).map((stream) => new Promise<void>((done) => createInterface({ input: child[stream], crlfDelay: Infinity }).on('line', (l) => onLine(l, stream)).on('close', done))),
  );
  const exit = await new Promise<{ code: number | null; error?: string }>((done) => {
    child.once('error', (err) => done({ code: null, error: `could not start: ${err.message}` }));
    child.once('exit', (code, signal) => done({ code, ...(signal ? { error: `ended by ${signal}` } : {}) }));
  });
  await closed;
  await new Promise<void>((done) => log.end(done));

  const run: ScaleRun = { round, config, label, exitCode: exit.code };
  reportDir ??= await findReportDir(runDir);
  if (!reportDir) return { ...run, error: exit.error ?? `no report (exit ${exit.code}); its last lines:\n${tail.join('\n')}` };
  let report: Report;
  try {
    report = JSON.parse(await readFile(join(reportDir, 'report.json'), 'utf8')) as Report;
  } catch (err) {
    return { ...run, reportDir, error: `reading its report.json: ${err instanceof Error ? err.message : String(err)}` };
  }
  let cpu: CpuFigures | undefined;
  if (before && after && m.ticksPerS) cpu = cpuFigures(cpuDelta(before, after, m.ticksPerS), report.load.completed);
  const missing = m.ticksPerS === undefined ? undefined : snapshotError ?? (cpu ? undefined : 'no CPU figures: the load start or end line was not seen');
  return { ...run, reportDir, figures: runFigures(report, cpu, m.deadlineMs), ...(missing ? { error: missing } : {}) };
}

/** One line per finished run, on stdout. */
function runLine(r: ScaleRun): string {
  const f = r.figures;
  const head = `[r${r.round} ${r.label}]`;
  if (!f) return `${head} no figures: ${r.error ?? `exit ${r.exitCode}`}`;
  const cpu = f.cpu ? `, CPU ${fmt(f.cpu.msPerCheckout.total, 3)} ms/checkout (${fmt(f.cpu.cores.total, 2)} cores)` : '';
  const commits = f.commits ? `, ${fmt(f.commits.partitionBatchesPerRequest, 2)} partition batches/checkout` : '';
  const stopped = f.stoppedBy === 'exhausted' ? '' : ` (stopped: ${f.stoppedBy})`;
  return (
    `${head} ${fmt(f.checkoutsPerS, 0)} checkouts/s${stopped}, p50 ${fmt(f.p50Ms, 1)} ms, p99 ${fmt(f.p99Ms, 1)} ms, stall ${fmt(f.stallS, 1)} s, ` +
    `503 x${f.answered503}${cpu}${commits}; audit ${f.audit.split(':')[0]}${r.error ? `; ${r.error}` : ''}`
  );
}

/**
 * Runs every configuration `o.rounds` times, interleaved; writes bench/out/<timestamp>-scale/ (rewritten
 * after each run, so an interrupted series keeps what it measured). `command`: the command line as typed.
 * Exit status: 0 every run audited PASS (an interrupted series too), 1 an audit FAIL, 2 a run that gave no figures.
 */
export async function runScale(o: ScaleOptions, command: string): Promise<number> {
  // The settings every run will have, checked now rather than by the first stack that fails to start.
  const deadlineMs = loadConfig(process.env).requestDeadlineMs;
  for (const c of o.configs) loadConfig({ ...process.env, ...childEnv(c) });
  const ticksPerS = procAvailable() ? clockTicksPerS() : undefined;
  if (ticksPerS === undefined) note('scale: no /proc here: runs are measured without CPU figures');

  const startedAt = new Date();
  const dir = resolve(o.outDir, reportDirName('scale', startedAt));
  await mkdir(dir, { recursive: true });
  const plan = schedule(o.configs, o.rounds);
  const runs: ScaleRun[] = [];
  const report = (): ScaleReport => {
    const configs = summarizeConfigs(o.configs, runs);
    return {
      scenario: 'scale',
      command,
      startedAt: startedAt.toISOString(),
      machine: machine(),
      options: o,
      requestDeadlineMs: deadlineMs,
      clockTicksPerS: ticksPerS,
      inheritedEnv: inheritedEnv(process.env),
      runs,
      configs,
      ratios: ratioTable(configs),
    };
  };
  const write = async (r: ScaleReport) => {
    await writeFile(join(dir, 'report.json'), JSON.stringify(r, null, 2) + '\n');
    const fit = fitModel(r.configs);
    const model = fit ? `\n## Scale-out model\n\nFrom this run's CPU per checkout (bench/model.ts; \`node dist/bench/model.js report.json\` prints it again):\n\n\`\`\`\n${renderModel(fit, predict(fit))}\`\`\`\n` : '';
    await writeFile(join(dir, 'report.md'), renderScaleMarkdown(r, (d) => relative(dir, d) + '/') + model);
  };

  // Ctrl-C: the run in progress stops its load and still reports (it gets the signal too), no further run
  // starts, and the series is reported; a second one aborts the run and this process.
  let current: ChildProcess | undefined;
  let interrupted = false;
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now();
    if (!firstSignalAt) {
      firstSignalAt = now;
      interrupted = true;
      note(`\n${signal}: finishing the run in progress, then reporting (again to abort at once)`);
      current?.kill(signal);
      return;
    }
    if (now - firstSignalAt < SIGNAL_REPEAT_MIN_MS) return;
    note(`${signal} again: aborting`);
    current?.kill(signal);
    process.exit(130);
  };
  for (const s of ['SIGINT', 'SIGTERM'] as const) process.on(s, onSignal);

  note(`scale: ${plan.length} runs of checkout-fresh (${o.orders} orders, ${o.connections} connections), ${o.configs.map(configLabel).join(', ')}` + (o.rounds > 1 ? `, ${o.rounds} rounds interleaved` : '') + `; report in ${relative(process.cwd(), dir) || dir}/`);
  for (const [i, { round, config }] of plan.entries()) {
    if (interrupted) break;
    note(`scale: run ${i + 1} of ${plan.length}: ${configLabel(config)} (${config.workers} worker${config.workers > 1 ? 's' : ''}, ${config.partitions} partitions per kind), round ${round} of ${o.rounds}`);
    const runDir = join(dir, `r${round}-${configLabel(config)}`);
    const run = await runOne(o, round, config, runDir, { deadlineMs, ticksPerS, forward: o.progress }, (child) => (current = child));
    current = undefined;
    runs.push(run);
    process.stdout.write(runLine(run) + '\n');
    await write(report());
  }
  const final = report();
  await write(final);
  process.stdout.write('\n' + renderSummary(final));
  const fit = fitModel(final.configs);
  if (fit) process.stdout.write('\nscale-out model (bench/model.ts)\n' + renderModel(fit, predict(fit)));
  process.stdout.write(`report: ${relative(process.cwd(), dir) || dir}/ (report.md, report.json; each run's own report under r<round>-<config>/)\n`);
  if (runs.some((r) => r.figures && !r.figures.audit.startsWith('PASS'))) return 1;
  if (runs.some((r) => !r.figures)) return 2;
  return 0;
}
