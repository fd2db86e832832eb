/**
 * The figures of the scale scenario, pure: what one checkout-fresh run of one configuration measured (from
 * its report and the CPU of its process tree), the median per configuration over rounds, the ratios between
 * configurations, and the tables of bench/out/<timestamp>-scale/. The runs themselves: bench/scale-run.ts.
 */
import { configLabel, type ScaleConfig, type ScaleOptions } from './options.js';
import { PROCESS_CLASSES, type CpuDelta, type ProcessClass, type Switches } from './proc.js';
import type { CommitFigures } from './commit-counts.js';
import { mdTable, type Machine, type Report } from './report.js';
import { round, type TimelinePoint } from './stats.js';

/** Where CPU is reported: each role, and all of them. */
export type CpuColumn = ProcessClass | 'total';
export const CPU_COLUMNS: readonly CpuColumn[] = [...PROCESS_CLASSES, 'total'];

export interface CpuFigures {
  /** The load window the CPU was measured over (from the run's `load:` line to its summary line). */
  windowS: number;
  /** CPU milliseconds per checkout completed in the window. */
  msPerCheckout: Record<CpuColumn, number>;
  /** CPU seconds per wall second: how many cores each role kept busy. */
  cores: Record<CpuColumn, number>;
  /**
   * Context switches per checkout completed in the window, of every thread of each role: how often its processes
   * slept and woke (voluntary) or were taken off a busy CPU (involuntary). What a process more costs on few cores.
   */
  switchesPerCheckout: Record<CpuColumn, Switches>;
  /** Processes per role at the end of the window. */
  processes: Record<ProcessClass, number>;
  /** Processes that ended within the window; above 0 something crashed or restarted (or Redis forked). */
  ended: number;
}

/** What one run measured. */
export interface RunFigures {
  /** Checkouts answered (any status) in the load window. */
  checkouts: number;
  /** Checkouts answered 2xx per second. */
  checkoutsPerS: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** The longest stretch of the per-second timeline without a 2xx checkout; 0 is the goal. */
  stallS: number;
  answered503: number;
  /**
   * Answers that can have waited the system's request deadline: 0 when the slowest answer came sooner, else
   * the 503s and unanswered requests (the gateway answers a checkout that reached the deadline with 503; the
   * report's histogram is not kept, so this is an upper bound then).
   */
  atDeadline: number;
  /** The audit's verdict line, or why it was skipped. */
  audit: string;
  /** exhausted: every order was checked out; interrupted: Ctrl-C cut the load short (its figures are of a part). */
  stoppedBy: string;
  cpu?: CpuFigures;
  /** Redis's commits and partition batches per checkout (bench/commit-counts.ts). */
  commits?: CommitFigures;
}

export interface ScaleRun {
  round: number;
  config: ScaleConfig;
  label: string;
  /** The run's own report directory (checkout-fresh's report.json, report.md, chart.svg, stack.log). */
  reportDir?: string;
  exitCode: number | null;
  /** Absent when the run gave no report; `error` says why. */
  figures?: RunFigures;
  error?: string;
}

/** Round 1: every configuration in order, round 2: every one again, ...; so drift of the machine hits all alike. */
export function schedule(configs: readonly ScaleConfig[], rounds: number): { round: number; config: ScaleConfig }[] {
  return Array.from({ length: rounds }, (_, r) => configs.map((config) => ({ round: r + 1, config }))).flat();
}

/**
 * The longest run of consecutive timeline windows without a 2xx answer, in seconds (a window's `seconds`,
 * 1 unless it is the shorter last one).
 */
export function stallSeconds(timeline: readonly Pick<TimelinePoint, 'okPerS' | 'seconds'>[]): number {
  let longest = 0;
  let current = 0;
  for (const p of timeline) {
    current = p.okPerS > 0 ? 0 : current + (p.seconds ?? 1);
    longest = Math.max(longest, current);
  }
  return round(longest, 3);
}

/** CPU per checkout and cores per role, from the delta over the load window and the checkouts it completed. */
export function cpuFigures(delta: CpuDelta, checkouts: number): CpuFigures {
  const ms = (c: CpuColumn) => (c === 'total' ? delta.totalMs : delta.msByClass[c]);
  const by = (f: (c: CpuColumn) => number) => Object.fromEntries(CPU_COLUMNS.map((c) => [c, f(c)])) as Record<CpuColumn, number>;
  const switches = (c: CpuColumn, k: keyof Switches) =>
    c === 'total' ? PROCESS_CLASSES.reduce((sum, p) => sum + delta.switchesByClass[p][k], 0) : delta.switchesByClass[c][k];
  const perCheckout = (n: number) => (checkouts > 0 ? round(n / checkouts, 4) : 0);
  return {
    windowS: round(delta.wallS, 3),
    msPerCheckout: by((c) => perCheckout(ms(c))),
    cores: by((c) => (delta.wallS > 0 ? round(ms(c) / 1000 / delta.wallS, 3) : 0)),
    switchesPerCheckout: Object.fromEntries(
      CPU_COLUMNS.map((c) => [c, { voluntary: perCheckout(switches(c, 'voluntary')), involuntary: perCheckout(switches(c, 'involuntary')) }]),
    ) as Record<CpuColumn, Switches>,
    processes: { ...delta.processesByClass },
    ended: delta.ended,
  };
}

/** One run's figures from its checkout-fresh report (`deadlineMs`: the system's requestDeadlineMs). */
export function runFigures(report: Pick<Report, 'load' | 'audit' | 'commits'>, cpu: CpuFigures | undefined, deadlineMs: number): RunFigures {
  const l = report.load;
  const status = (s: string) => l.byStatus[s] ?? 0;
  return {
    checkouts: l.completed,
    checkoutsPerS: l.okPerS,
    p50Ms: l.latency.p50Ms,
    p99Ms: l.latency.p99Ms,
    maxMs: l.latency.maxMs,
    stallS: stallSeconds(l.timeline),
    answered503: status('503'),
    atDeadline: l.latency.maxMs >= deadlineMs ? status('503') + status('0') : 0,
    audit: 'skipped' in report.audit ? `skipped: ${report.audit.skipped}` : report.audit.verdict,
    stoppedBy: l.stoppedBy,
    ...(cpu ? { cpu } : {}),
    ...(report.commits ? { commits: report.commits } : {}),
  };
}

/** The median; of an even count, the mean of the middle two. NaN for none. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const medianOf = <T>(items: readonly T[], f: (x: T) => number, digits = 3) => round(median(items.map(f)), digits);
const medianRecord = <K extends string>(keys: readonly K[], records: readonly Record<K, number>[], digits: number) =>
  Object.fromEntries(keys.map((k) => [k, medianOf(records, (r) => r[k], digits)])) as Record<K, number>;

/**
 * Each figure's median over the runs, taken figure by figure (the p99 shown is the median p99, not the p99 of
 * the median-throughput run). The audit is the verdicts' PASS/FAIL words, one per run when they differ.
 */
export function medianFigures(runs: readonly RunFigures[]): RunFigures | undefined {
  if (runs.length === 0) return undefined;
  const withCpu = runs.flatMap((r) => (r.cpu ? [r.cpu] : []));
  const withCommits = runs.flatMap((r) => (r.commits ? [r.commits] : []));
  const words = runs.map((r) => r.audit.split(':')[0] ?? r.audit);
  const stops = [...new Set(runs.map((r) => r.stoppedBy))];
  const f = (get: (r: RunFigures) => number, digits = 3) => medianOf(runs, get, digits);
  return {
    checkouts: f((r) => r.checkouts, 0),
    checkoutsPerS: f((r) => r.checkoutsPerS, 1),
    p50Ms: f((r) => r.p50Ms),
    p99Ms: f((r) => r.p99Ms),
    maxMs: f((r) => r.maxMs),
    stallS: f((r) => r.stallS),
    answered503: f((r) => r.answered503, 1),
    atDeadline: f((r) => r.atDeadline, 1),
    audit: words.every((w) => w === words[0]) ? `${words[0]}${runs.length > 1 ? ` (${runs.length} runs)` : ''}` : words.join(', '),
    stoppedBy: stops.join(', '),
    ...(withCpu.length > 0
      ? {
          cpu: {
            windowS: medianOf(withCpu, (c) => c.windowS),
            msPerCheckout: medianRecord(CPU_COLUMNS, withCpu.map((c) => c.msPerCheckout), 4),
            cores: medianRecord(CPU_COLUMNS, withCpu.map((c) => c.cores), 3),
            switchesPerCheckout: Object.fromEntries(
              CPU_COLUMNS.map((c) => [
                c,
                { voluntary: medianOf(withCpu, (f) => f.switchesPerCheckout[c].voluntary, 4), involuntary: medianOf(withCpu, (f) => f.switchesPerCheckout[c].involuntary, 4) },
              ]),
            ) as Record<CpuColumn, Switches>,
            processes: medianRecord(PROCESS_CLASSES, withCpu.map((c) => c.processes), 1),
            ended: Math.max(...withCpu.map((c) => c.ended)),
          },
        }
      : {}),
    ...(withCommits.length > 0
      ? { commits: { commitsPerRequest: medianOf(withCommits, (c) => c.commitsPerRequest, 5), partitionBatchesPerRequest: medianOf(withCommits, (c) => c.partitionBatchesPerRequest, 5) } }
      : {}),
  };
}

/** Per configuration, in the order given: its runs' medians. */
export interface ConfigSummary {
  label: string;
  config: ScaleConfig;
  /** Runs that gave figures. */
  runs: number;
  /** Runs that gave none (see their `error`). */
  failed: number;
  median?: RunFigures;
}

export function summarizeConfigs(configs: readonly ScaleConfig[], runs: readonly ScaleRun[]): ConfigSummary[] {
  return configs.map((config) => {
    const label = configLabel(config);
    const mine = runs.filter((r) => r.label === label);
    const figures = mine.flatMap((r) => (r.figures ? [r.figures] : []));
    const median = medianFigures(figures);
    return { label, config, runs: figures.length, failed: mine.length - figures.length, ...(median ? { median } : {}) };
  });
}

/** The comparisons the scenario exists for: one dimension changed, the other held. */
export const RATIOS: readonly { name: string; over: string; under: string }[] = [
  { name: '2 workers ÷ 1 worker at 8 partitions', over: '2x8', under: '1x8' },
  { name: '2 workers ÷ 1 worker at 64 partitions', over: '2x64', under: '1x64' },
  { name: '64 partitions ÷ 2 partitions at 1 worker', over: '1x64', under: '1x2' },
  { name: '4 workers ÷ 1 worker at 64 partitions', over: '4x64', under: '1x64' },
];

export interface Ratio {
  name: string;
  over: string;
  under: string;
  /** over ÷ under of the medians; above 1: `over` is faster. */
  checkoutsPerS: number;
  /** above 1: `over` has the slower tail. */
  p99Ms: number;
  /** above 1: `over` spends more CPU per checkout. */
  cpuMsPerCheckout?: number;
  cores?: number;
}

/** The ratios whose two configurations both gave figures; the others are left out. */
export function ratioTable(summaries: readonly ConfigSummary[]): Ratio[] {
  const byLabel = new Map(summaries.flatMap((s) => (s.median ? [[s.label, s.median] as const] : [])));
  const ratio = (a: number, b: number) => (b > 0 ? round(a / b, 3) : NaN);
  return RATIOS.flatMap(({ name, over, under }) => {
    const a = byLabel.get(over);
    const b = byLabel.get(under);
    if (!a || !b) return [];
    return [
      {
        name,
        over,
        under,
        checkoutsPerS: ratio(a.checkoutsPerS, b.checkoutsPerS),
        p99Ms: ratio(a.p99Ms, b.p99Ms),
        ...(a.cpu && b.cpu ? { cpuMsPerCheckout: ratio(a.cpu.msPerCheckout.total, b.cpu.msPerCheckout.total), cores: ratio(a.cpu.cores.total, b.cpu.cores.total) } : {}),
      },
    ];
  });
}

export interface ScaleReport {
  scenario: 'scale';
  /** As typed: `npm run bench -- scale <args>`. */
  command: string;
  startedAt: string;
  machine: Machine;
  options: ScaleOptions;
  /** The system's request deadline the runs had (a checkout unanswered this long is answered 503). */
  requestDeadlineMs: number;
  /** Of /proc's CPU times; undefined when there is no /proc (no CPU figures then). */
  clockTicksPerS: number | undefined;
  /** SHOP_* settings every run inherited besides the two each configuration sets. */
  inheritedEnv: Record<string, string>;
  /** In the order they ran. */
  runs: ScaleRun[];
  configs: ConfigSummary[];
  ratios: Ratio[];
}

// ---- tables --------------------------------------------------------------------------------------------

export const fmt = (n: number | undefined, digits: number) => (n === undefined || !Number.isFinite(n) ? '-' : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }));

type Table = { head: string[]; rows: string[][] };

/** Per configuration: speed, tail, stalls, failures, CPU in all, audit. */
export function resultsTable(summaries: readonly ConfigSummary[]): Table {
  return {
    head: ['config', 'workers', 'partitions', 'runs', 'checkouts/s', 'p50 ms', 'p99 ms', 'max ms', 'stall s', '503', '≥ deadline', 'CPU ms/checkout', 'cores', 'audit'],
    rows: summaries.map((s) => {
      const m = s.median;
      return [
        s.label,
        String(s.config.workers),
        String(s.config.partitions),
        s.failed ? `${s.runs} (+${s.failed} failed)` : String(s.runs),
        fmt(m?.checkoutsPerS, 0),
        fmt(m?.p50Ms, 1),
        fmt(m?.p99Ms, 1),
        fmt(m?.maxMs, 0),
        fmt(m?.stallS, 1),
        fmt(m?.answered503, 0),
        fmt(m?.atDeadline, 0),
        fmt(m?.cpu?.msPerCheckout.total, 3),
        fmt(m?.cpu?.cores.total, 2),
        m?.audit.split(':')[0] ?? '-',
      ];
    }),
  };
}

/** Per configuration and role: CPU ms per checkout, and in parentheses the cores it kept busy. */
export function cpuTable(summaries: readonly ConfigSummary[]): Table {
  return {
    head: ['config', ...CPU_COLUMNS],
    rows: summaries.map((s) => {
      const cpu = s.median?.cpu;
      return [s.label, ...CPU_COLUMNS.map((c) => (cpu ? `${fmt(cpu.msPerCheckout[c], 3)} (${fmt(cpu.cores[c], 2)})` : '-'))];
    }),
  };
}

/** Per configuration and role: context switches per checkout, voluntary + involuntary. */
export function switchesTable(summaries: readonly ConfigSummary[]): Table {
  return {
    head: ['config', ...CPU_COLUMNS],
    rows: summaries.map((s) => {
      const sw = s.median?.cpu?.switchesPerCheckout;
      return [s.label, ...CPU_COLUMNS.map((c) => (sw ? `${fmt(sw[c].voluntary, 3)} + ${fmt(sw[c].involuntary, 3)}` : '-'))];
    }),
  };
}

/** Per configuration: Redis's commits and partition batches per checkout, and checkouts per commit. */
export function commitsTable(summaries: readonly ConfigSummary[]): Table {
  return {
    head: ['config', 'commits/checkout', 'partition batches/checkout', 'checkouts/commit'],
    rows: summaries.map((s) => {
      const c = s.median?.commits;
      return [s.label, fmt(c?.commitsPerRequest, 3), fmt(c?.partitionBatchesPerRequest, 2), c && c.commitsPerRequest > 0 ? fmt(1 / c.commitsPerRequest, 0) : '-'];
    }),
  };
}

export function ratiosTable(ratios: readonly Ratio[]): Table {
  return {
    head: ['ratio', 'configs', 'checkouts/s', 'p99', 'CPU ms/checkout', 'cores'],
    rows: ratios.map((r) => [r.name, `${r.over} ÷ ${r.under}`, fmt(r.checkoutsPerS, 2), fmt(r.p99Ms, 2), fmt(r.cpuMsPerCheckout, 2), fmt(r.cores, 2)]),
  };
}

/** Every run as it went, for the report: the medians hide a bad run. */
export function runsTable(runs: readonly ScaleRun[], reportLink: (dir: string) => string = (d) => d): Table {
  return {
    head: ['round', 'config', 'checkouts/s', 'p99 ms', 'stall s', '503', 'CPU ms/checkout', 'ended', 'stopped', 'audit', 'report'],
    rows: runs.map((r) => {
      const f = r.figures;
      return [
        String(r.round),
        r.label,
        fmt(f?.checkoutsPerS, 0),
        fmt(f?.p99Ms, 1),
        fmt(f?.stallS, 1),
        fmt(f?.answered503, 0),
        fmt(f?.cpu?.msPerCheckout.total, 3),
        f?.cpu ? String(f.cpu.ended) : '-',
        f?.stoppedBy ?? '-',
        f ? f.audit.split(':')[0]! : `no figures: ${r.error ?? `exit ${r.exitCode}`}`,
        r.reportDir ? reportLink(r.reportDir) : '-',
      ];
    }),
  };
}

/** Columns padded for a terminal: a column of figures (and its heading) to the right, any other to the left. */
export function textTable({ head, rows }: Table): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const figures = head.map((_, i) => rows.length > 0 && rows.every((r) => /^[-\d,.]+( \([-\d,.]+\)| \+ [-\d,.]+)?$/.test(r[i] ?? '')));
  const line = (cells: string[]) => cells.map((c, i) => (figures[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n');
}

/** Aligned tables for stdout at the end of a scale run. */
export function renderSummary(r: Pick<ScaleReport, 'configs' | 'ratios'>): string {
  const parts = ['scale: medians per configuration (workers x partitions per kind)', textTable(resultsTable(r.configs)), '', 'CPU ms per checkout by process during the load (cores used)', textTable(cpuTable(r.configs))];
  if (r.configs.some((c) => c.median?.cpu)) parts.push('', 'context switches per checkout by process during the load (voluntary + involuntary)', textTable(switchesTable(r.configs)));
  if (r.configs.some((c) => c.median?.commits)) parts.push('', 'Redis commits during the load', textTable(commitsTable(r.configs)));
  if (r.ratios.length > 0) parts.push('', 'ratios of the medians', textTable(ratiosTable(r.ratios)));
  return parts.join('\n') + '\n';
}

export function renderScaleMarkdown(r: ScaleReport, reportLink: (dir: string) => string = (d) => d): string {
  const m = r.machine;
  const o = r.options;
  const md = ({ head, rows }: Table) => mdTable(head, rows);
  const inherited = Object.entries(r.inheritedEnv).map(([k, v]) => `${k}=${v}`);
  const lines = [
    '# Benchmark: scale',
    '',
    `- Started: ${r.startedAt}`,
    `- Command: \`${r.command}\``,
    `- Machine: ${m.cores} cores, ${m.cpuModel}, ${m.memoryGiB} GiB memory, Node ${m.node}, ${m.kernel}`,
    `- Each run: \`checkout-fresh --start --orders ${o.orders} --connections ${o.connections} --seed ${o.seed}${o.prime ? '' : ' --no-prime'}\` in a fresh process with a fresh stack, ` +
      `SHOP_WORKER_PROCESSES and SHOP_PARTITIONS set per configuration${inherited.length ? `; inherited ${inherited.join(' ')}` : ''}`,
    `- Rounds: ${o.rounds} (every configuration once per round, in order); figures are medians over the rounds, figure by figure`,
    `- Request deadline: ${r.requestDeadlineMs} ms; CPU from /proc${r.clockTicksPerS ? ` (${r.clockTicksPerS} ticks/s)` : ': not available here'}, over the load window only`,
    '',
    '## Results',
    '',
    md(resultsTable(r.configs)),
    '',
    'checkouts/s: 2xx answers per second. stall s: the longest stretch of seconds without a 2xx answer. ' +
      '≥ deadline: answers that can have waited the request deadline (0 when the slowest came sooner). ' +
      'CPU ms/checkout: CPU of every process of the run (stack and generator) in the load window ÷ checkouts answered in it; cores: that CPU ÷ the window.',
    '',
    '## CPU by process',
    '',
    'CPU ms per checkout of each kind of process in the load window, and in parentheses the cores it kept busy.',
    '',
    md(cpuTable(r.configs)),
    '',
    'generator+supervisor is the bench process of the run: the load generator, with the supervisor in-process; other is the ' +
      'supervisor\'s reaper and anything else below it. A process that ended within the window (the runs table\'s ended) ' +
      'left its CPU to its parent, which then also counts what it used before the window.',
    '',
    '## Context switches by process',
    '',
    md(switchesTable(r.configs)),
    '',
    'Per checkout, of every thread of each kind of process (/proc/<pid>/task/*/status), voluntary (it slept and was woken: a socket, ' +
      'a timer) + involuntary (the scheduler took the CPU from it while it could run: another process\'s turn). Those of a process or thread ' +
      'that ended within the window are not counted.',
    '',
    '## Redis commits',
    '',
    md(commitsTable(r.configs)),
    '',
    'From Redis INFO commandstats before and after each run\'s load: calls of the commit script (one per group commit of a worker) ' +
      'and its reads of a partition\'s meta (one per partition batch in a commit; what a partition costs in a commit whatever it writes). - : not read.',
    '',
    '## Ratios',
    '',
    r.ratios.length > 0 ? md(ratiosTable(r.ratios)) : 'None: no pair of configurations a ratio compares was run.',
    '',
    'Of the medians, first ÷ second: checkouts/s above 1 means faster; p99, CPU ms/checkout and cores above 1 mean more.',
    '',
    '## Every run',
    '',
    md(runsTable(r.runs, reportLink)),
    '',
  ];
  return lines.join('\n');
}
