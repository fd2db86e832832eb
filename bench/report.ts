/**
 * The report directory of a run: report.json (everything), report.md (tables, the command line, the machine)
 * and chart.svg (throughput and p99 latency over time).
 */
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { verdict, type AuditResult } from './audit.js';
import type { CommitFigures } from './commit-counts.js';
import type { StopReason } from './engine.js';
import type { BenchOptions } from './options.js';
import type { StatsSummary } from './stats.js';
import { renderChart } from './svg.js';

export interface Machine {
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  kernel: string;
}

export function machine(): Machine {
  let cpuModel = cpus()[0]?.model ?? 'unknown';
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'));
    if (line) cpuModel = line.slice(line.indexOf(':') + 1).trim();
  } catch {
    // not Linux: os.cpus() it is
  }
  return { cores: cpus().length, cpuModel, memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10, node: process.version, kernel: `${process.platform} ${release()}` };
}

export interface Report {
  scenario: string;
  /** As typed: `npm run bench -- <args>`. */
  command: string;
  startedAt: string;
  machine: Machine;
  target: { url: string; startedByBench: boolean };
  /** "closed loop, 256 connections" and the like. */
  model: string;
  options: BenchOptions;
  setup: { what: string; ms: number }[];
  load: StatsSummary & {
    elapsedS: number;
    stoppedBy: StopReason;
    issued: number;
    /** Completed requests per second over the whole run. */
    throughputPerS: number;
    okPerS: number;
  };
  audit: (AuditResult & { verdict: string; readMs: number }) | { skipped: string };
  /** With --start: the commits and partition batches a request made (bench/commit-counts.ts). */
  commits?: CommitFigures;
}

/** bench/out/2025-05-01T12-30-05-checkout-fresh: sortable, no characters a shell or Windows dislikes. */
export function reportDirName(scenario: string, at: Date): string {
  return `${at.toISOString().slice(0, 19).replace(/:/g, '-')}-${scenario}`;
}

export async function writeReport(dir: string, report: Report): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'report.json'), JSON.stringify(report, null, 2) + '\n');
  await writeFile(join(dir, 'report.md'), renderMarkdown(report));
  await writeFile(join(dir, 'chart.svg'), renderTimelineChart(report));
}

export function renderTimelineChart(report: Report): string {
  const tl = report.load.timeline;
  return renderChart({
    title: `${report.scenario}: throughput and p99 latency`,
    subtitle: `${report.model}; ${report.startedAt}`,
    xLabel: 'seconds since the load started',
    series: [
      { name: 'completed', unit: 'req/s', color: '#1f77b4', axis: 'left', points: tl.map((p) => [p.t, p.rps] as const) },
      { name: '2xx', unit: 'req/s', color: '#2ca02c', axis: 'left', dashed: true, points: tl.map((p) => [p.t, p.okPerS] as const) },
      { name: 'p99 latency', unit: 'ms', color: '#d62728', axis: 'right', points: tl.map((p) => [p.t, p.p99Ms] as const) },
    ],
  });
}

const num = (n: number) => n.toLocaleString('en-US', { maximumFractionDigits: 1 });
const row = (cells: (string | number)[]) => `| ${cells.map((c) => (typeof c === 'number' ? num(c) : c)).join(' | ')} |`;
const table = (head: string[], rows: (string | number)[][]) => [row(head), row(head.map(() => '---')), ...rows.map(row)].join('\n');
/** A Markdown table; numbers formatted en-US with at most one decimal. */
export { table as mdTable };
/** The timeline table gets at most this many rows; a longer run shows every n-th second. */
const TIMELINE_ROWS_MAX = 60;

export function renderMarkdown(r: Report): string {
  const m = r.machine;
  const l = r.load;
  const lines: string[] = [];
  lines.push(`# Benchmark: ${r.scenario}`, '');
  lines.push(`- Started: ${r.startedAt}`);
  lines.push(`- Command: \`${r.command}\``);
  lines.push(`- Machine: ${m.cores} cores, ${m.cpuModel}, ${m.memoryGiB} GiB memory, Node ${m.node}, ${m.kernel}`);
  lines.push(`- Target: ${r.target.url}${r.target.startedByBench ? ' (a local stack started by the bench, fresh data directory)' : ' (a running system)'}`);
  const warmup = r.options.warmupMs ? ` after a ${num(r.options.warmupMs / 1000)} s warm-up (not measured)` : '';
  lines.push(`- Load: ${r.model}; measured ${num(l.elapsedS)} s${warmup}, stopped: ${l.stoppedBy}; seed ${r.options.seed}`);
  lines.push('');
  if (r.setup.length > 0) {
    lines.push('## Setup', '', table(['step', 'ms'], r.setup.map((s) => [s.what, s.ms])), '');
  }
  lines.push('## Results', '');
  lines.push(
    table(
      ['requests', 'throughput (req/s)', '2xx/s', '2xx', 'expected refusals', 'errors', 'dropped (open loop)'],
      [[l.completed, l.throughputPerS, l.okPerS, l.ok, l.expected, l.errors, l.dropped]],
    ),
    '',
  );
  lines.push('### Latency (ms)', '');
  const lat = (name: string, s: StatsSummary['latency']) => [name, s.count, s.p50Ms, s.p90Ms, s.p99Ms, s.p999Ms, s.maxMs, s.meanMs];
  lines.push(
    table(
      ['operation', 'count', 'p50', 'p90', 'p99', 'p99.9', 'max', 'mean'],
      [lat('all', l.latency), ...(l.byKind.length > 1 ? l.byKind.map((k) => lat(k.name, k.latency)) : [])],
    ),
    '',
  );
  if (l.byKind.length > 1) {
    lines.push('### By operation', '', table(['operation', '2xx', 'expected', 'errors'], l.byKind.map((k) => [k.name, k.ok, k.expected, k.errors])), '');
  }
  lines.push('### Responses', '', table(['HTTP status', 'count'], Object.entries(l.byStatus).map(([s, n]) => [s === '0' ? 'no response' : s, n])), '');
  if (Object.keys(l.byCode).length > 0) {
    lines.push(table(['error code', 'count'], Object.entries(l.byCode).map(([c, n]) => [c, n])), '');
  }
  if (r.commits) {
    lines.push(
      '### Redis commits',
      '',
      table(['commits per request', 'partition batches per request'], [[r.commits.commitsPerRequest, r.commits.partitionBatchesPerRequest]]),
      '',
      'From Redis INFO commandstats before and after the load: calls of the commit script (one per group commit) and its reads of a partition\'s meta (one per partition batch).',
      '',
    );
  }
  lines.push('## Audit', '');
  if ('skipped' in r.audit) {
    lines.push(`Skipped: ${r.audit.skipped}.`, '');
  } else {
    lines.push(`**${verdict(r.audit)}** (read back in ${num(r.audit.readMs)} ms)`, '');
    if (r.audit.examples.length > 0) lines.push(...r.audit.examples.map((e) => `- ${e}`), '');
  }
  lines.push('## Over time', '', '![throughput and p99 latency over time](chart.svg)', '');
  const step = Math.max(1, Math.ceil(l.timeline.length / TIMELINE_ROWS_MAX));
  const points = l.timeline.filter((_, i) => i % step === 0 || i === l.timeline.length - 1);
  lines.push(
    table(
      ['t (s)', 'req/s', '2xx/s', 'expected/s', 'errors/s', 'dropped/s', 'p50 (ms)', 'p99 (ms)', 'max (ms)'],
      points.map((p) => [p.t, p.rps, p.okPerS, p.expectedPerS, p.errorsPerS, p.droppedPerS, p.p50Ms, p.p99Ms, p.maxMs]),
    ),
    '',
  );
  return lines.join('\n');
}
