/** The scale scenario's pure parts (bench/options.ts, proc.ts, scale.ts, scale-run.ts): no benchmark is run, no network. */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { commitCountsOf, commitFigures } from '../../bench/commit-counts.js';
import { DEFAULT_SCALE_CONFIGS, HelpShown, parseConfigs, parseInvocation, parseOptions, SCALE_DEFAULT_ORDERS, UsageError, type ScaleOptions } from '../../bench/options.js';
import { classifyProcess, cpuDelta, parseCmdline, parseStat, parseSwitches, snapshotTree, treeOf, type ProcStat, type TreeProcess, type TreeSnapshot } from '../../bench/proc.js';
import type { Report } from '../../bench/report.js';
import { childArgs, childEnv, inheritedEnv } from '../../bench/scale-run.js';
import {
  commitsTable,
  cpuFigures,
  median,
  medianFigures,
  ratioTable,
  renderScaleMarkdown,
  renderSummary,
  runFigures,
  schedule,
  stallSeconds,
  summarizeConfigs,
  switchesTable,
  textTable,
  type RunFigures,
  type ScaleReport,
  type ScaleRun,
} from '../../bench/scale.js';
import type { TimelinePoint } from '../../bench/stats.js';

const scale = (...argv: string[]): ScaleOptions => {
  const o = parseInvocation(['scale', ...argv], () => 42);
  if (o.scenario !== 'scale') throw new Error(`expected scale options, got ${o.scenario}`);
  return o;
};

t.test('options: scale defaults, --configs, --rounds and what is passed through', async (t) => {
  const o = scale();
  t.same(o.configs.map((c) => `${c.workers}x${c.partitions}`), ['1x2', '1x8', '2x8', '1x64', '2x64', '4x64']);
  t.match(o, { rounds: 1, orders: SCALE_DEFAULT_ORDERS, connections: 256, seed: 42, prime: true, outDir: 'bench/out', progress: true });
  t.ok(Object.isFrozen(o));
  t.same(DEFAULT_SCALE_CONFIGS, o.configs);

  const custom = scale('--configs', '1x2, 2X64,4x64', '--rounds', '3', '--orders', '5000', '-c', '64', '--seed', '7', '--no-prime', '--no-progress', '--out', '/tmp/o');
  t.same(custom.configs, [
    { workers: 1, partitions: 2 },
    { workers: 2, partitions: 64 },
    { workers: 4, partitions: 64 },
  ]);
  t.match(custom, { rounds: 3, orders: 5000, connections: 64, seed: 7, prime: false, progress: false, outDir: '/tmp/o' });
  t.equal(scale('--start').scenario, 'scale', '--start is what scale does anyway');
  t.equal(scale('--orders', '5000').orders, 5000);
});

t.test('options: scale refuses what makes no sense for it, and the load scenarios refuse its options', async (t) => {
  const usage = (argv: string[], pattern: RegExp, what: string) => t.throws(() => parseInvocation(argv, () => 1), pattern, what);
  usage(['scale', '--rate', '5k'], /does not take --rate/, '--rate');
  usage(['scale', '--url', 'http://127.0.0.1:9000'], /does not take --url/, '--url');
  usage(['scale', '--start', '--url', 'http://127.0.0.1:9000'], /--url/, '--url with --start');
  usage(['scale', '--duration', '10', '--no-audit'], /does not take --duration, --no-audit/, 'every refused option is named');
  usage(['scale', '--items', '3'], /--items/, '--items: checkout-fresh sizes items by --orders');
  usage(['scale', '--rounds', '0'], /rounds.*1\.\.100/, 'zero rounds');
  usage(['scale', '--configs', '1x2,1x2'], /listed twice.*--rounds/, 'a repeated configuration');
  usage(['reads', '--configs', '1x2'], /--configs is an option of the scale scenario/, '--configs with a load scenario');
  usage(['checkout-fresh', '--rounds', '2', '--configs', '1x2'], /--configs and --rounds are options of the scale/, 'both');
  t.throws(() => parseOptions(['scale']), UsageError, 'parseOptions is for the load scenarios');
  t.equal(parseOptions(['checkout-fresh', '--orders', '10']).orders, 10, 'the load scenarios parse as before');
  try {
    parseInvocation(['--help']);
    t.fail('--help should throw HelpShown');
  } catch (err) {
    t.type(err, HelpShown);
    t.match((err as HelpShown).text, /--configs <list>[^]*--rounds <n>[^]*Scenarios:[^]*\n {2}scale {2,}checkout-fresh --start once per/);
  }
});

t.test('options: --configs lists workers x partitions', async (t) => {
  t.same(parseConfigs('1x2'), [{ workers: 1, partitions: 2 }]);
  t.same(parseConfigs('4x64,1x1'), [
    { workers: 4, partitions: 64 },
    { workers: 1, partitions: 1 },
  ]);
  for (const bad of ['', '1x', 'x2', '1*2', '1x2,', '0x2', '1x0', '257x2', '1x4097', '1.5x2', '1x2x3']) t.throws(() => parseConfigs(bad), `${JSON.stringify(bad)} is refused`);
});

t.test('each configuration runs checkout-fresh --start with its own SHOP_ settings', async (t) => {
  const o = scale('--orders', '5000', '-c', '32', '--seed', '9', '--no-prime');
  const argv = childArgs(o, '/tmp/scale/r1-2x8');
  const child = parseOptions(argv, () => 0);
  t.match(child, { scenario: 'checkout-fresh', start: true, orders: 5000, items: 5000, users: 5000, connections: 32, seed: 9, prime: false, outDir: '/tmp/scale/r1-2x8', progress: false, audit: true, rate: undefined });
  t.equal(parseOptions(childArgs(scale(), '/x')).prime, true, 'primed unless --no-prime');
  t.same(childEnv({ workers: 2, partitions: 8 }), { SHOP_WORKER_PROCESSES: '2', SHOP_PARTITIONS: '8' });
  t.same(inheritedEnv({ SHOP_PARTITIONS: '2', SHOP_WORKER_PROCESSES: '1', SHOP_REDIS_APPENDFSYNC: 'always', PATH: '/bin' }), { SHOP_REDIS_APPENDFSYNC: 'always' }, 'the two a configuration sets are not inherited');
});

t.test('schedule: rounds interleaved, configurations in the order given', async (t) => {
  const plan = schedule(parseConfigs('1x2,2x8,1x64'), 2).map((p) => `r${p.round}:${p.config.workers}x${p.config.partitions}`);
  t.same(plan, ['r1:1x2', 'r1:2x8', 'r1:1x64', 'r2:1x2', 'r2:2x8', 'r2:1x64']);
});

// /proc/<pid>/stat with the fields this module reads: 4 ppid, 14-17 utime stime cutime cstime, 22 starttime.
function statLine(pid: number, comm: string, ppid: number, utime: number, stime: number, cutime = 0, cstime = 0, start = 1000): string {
  const f = ['S', ppid, pid, pid, 0, -1, 4194304, 100, 0, 0, 0, utime, stime, cutime, cstime, 20, 0, 11, 0, start, 123456, 789];
  return `${pid} (${comm}) ${f.join(' ')}\n`;
}

t.test('proc: a stat line, whatever its comm holds', async (t) => {
  t.same(parseStat(statLine(42, 'node', 7, 150, 30, 5, 1, 999)), { pid: 42, comm: 'node', ppid: 7, ownTicks: 180, reapedTicks: 6, startTicks: 999 });
  const odd = parseStat(statLine(43, 'a) (b c', 1, 2, 3));
  t.match(odd, { pid: 43, comm: 'a) (b c', ppid: 1, ownTicks: 5 }, 'spaces and parentheses in comm');
  t.equal(parseStat(''), undefined);
  t.equal(parseStat('garbage'), undefined);
  t.equal(parseStat('12 (x) S'), undefined, 'a truncated line');
  t.same(parseCmdline('/usr/bin/node\0/app/dist/src/main.js\0worker\0'), ['/usr/bin/node', '/app/dist/src/main.js', 'worker']);
  t.same(parseCmdline('redis-server 127.0.0.1:6379'), ['redis-server 127.0.0.1:6379']);
  t.same(parseCmdline(''), [], 'a kernel thread or a zombie has none');
  t.same(parseCmdline('a\0\0b\0'), ['a', '', 'b'], 'an empty argument is kept');
});

// /proc/<pid>/task/<tid>/status, cut to the lines around the two this module reads.
const statusText = (voluntary: number, involuntary: number) =>
  `Name:\tnode\nState:\tS (sleeping)\nThreads:\t11\nvoluntary_ctxt_switches:\t${voluntary}\nnonvoluntary_ctxt_switches:\t${involuntary}\n`;

t.test('proc: context switches from a status file', async (t) => {
  t.same(parseSwitches(statusText(1234, 56)), { voluntary: 1234, involuntary: 56 });
  t.equal(parseSwitches('Name:\tnode\nvoluntary_ctxt_switches:\t3\n'), undefined, 'one counter missing');
  t.equal(parseSwitches(''), undefined);
  t.equal(parseSwitches('voluntary_ctxt_switches:\tmany\nnonvoluntary_ctxt_switches:\t1\n'), undefined, 'not a number');
});

t.test('proc: each process of the tree by role', async (t) => {
  const c = (comm: string, argv: string[], root = false) => classifyProcess({ comm, argv }, root);
  t.equal(c('nats-server', ['nats-server', '-js', '-p', '4222']), 'nats');
  t.equal(c('nats-server', ['/usr/sbin/nats-server', '-c', 'local.conf']), 'nats');
  t.equal(c('redis-server', ['redis-server 127.0.0.1:6379']), 'redis', 'Redis rewrites its argv into one title');
  t.equal(c('redis-aof-rewri', ['redis-aof-rewrite 127.0.0.1:6379']), 'redis', 'its AOF rewrite fork');
  t.equal(c('node', ['/usr/bin/node', '/w/dist/src/main.js', 'worker']), 'worker');
  t.equal(c('node', ['/usr/bin/node', '--cpu-prof', '/w/dist/src/main.js', 'gateway']), 'gateway');
  t.equal(c('node', ['/usr/bin/node', '/w/dist/bench/run.js', 'checkout-fresh', '--start'], true), 'generator+supervisor');
  t.equal(c('nats-server', ['nats-server'], true), 'generator+supervisor', 'the root is the bench process whatever it looks like');
  t.equal(c('node', ['/usr/bin/node', '-e', 'reaper source']), 'other', 'the reaper');
  t.equal(c('node', ['/usr/bin/node', '/w/dist/src/main.js', 'supervisor']), 'other');
  t.equal(c('sh', ['sh', '-c', 'worker']), 'other');
});

const stat = (pid: number, ppid: number, ownTicks = 0, extra: Partial<ProcStat> = {}): ProcStat => ({ pid, ppid, comm: 'x', ownTicks, reapedTicks: 0, startTicks: 1, ...extra });

t.test('proc: the tree under a root, by ppid', async (t) => {
  const all = [stat(1, 0), stat(10, 1), stat(20, 10), stat(21, 10), stat(30, 20), stat(40, 1), stat(41, 40)];
  t.same(
    treeOf(all, 10).map((p) => p.pid).sort((a, b) => a - b),
    [10, 20, 21, 30],
    'the root, its children and grandchildren; not its parent or siblings',
  );
  t.same(treeOf(all, 99), [], 'a root that is gone');
});

t.test('proc: snapshotTree reads a /proc-like directory', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-proc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const proc = (pid: number, stat: string, cmdline: string) => {
    mkdirSync(join(dir, String(pid)));
    writeFileSync(join(dir, String(pid), 'stat'), stat);
    writeFileSync(join(dir, String(pid), 'cmdline'), cmdline);
  };
  proc(500, statLine(500, 'node', 1, 100, 20), '/usr/bin/node\0/w/dist/bench/run.js\0checkout-fresh\0');
  proc(501, statLine(501, 'nats-server', 500, 30, 10), 'nats-server\0-js\0');
  proc(502, statLine(502, 'redis-server', 500, 40, 5), 'redis-server 127.0.0.1:1234');
  proc(503, statLine(503, 'node', 500, 300, 50), '/usr/bin/node\0/w/dist/src/main.js\0worker\0');
  proc(504, statLine(504, 'node', 500, 80, 20), '/usr/bin/node\0/w/dist/src/main.js\0gateway\0');
  proc(900, statLine(900, 'node', 1, 5000, 0), '/usr/bin/node\0/w/dist/src/main.js\0worker\0');
  const task = (pid: number, tid: number, status?: string) => {
    mkdirSync(join(dir, String(pid), 'task', String(tid)), { recursive: true });
    if (status !== undefined) writeFileSync(join(dir, String(pid), 'task', String(tid), 'status'), status);
  };
  task(501, 501, statusText(2, 0)); // nats-server: its first thread sleeps, the others work
  task(501, 510, statusText(700, 30));
  task(501, 511, statusText(300, 20));
  task(503, 503, statusText(90, 9));
  task(503, 520); // a thread that ended between the listing and the read
  mkdirSync(join(dir, '600')); // ended between the listing and the read: no stat
  mkdirSync(join(dir, 'self'));
  writeFileSync(join(dir, 'uptime'), '1 1');

  const snap = snapshotTree(500, dir, () => 1234);
  t.equal(snap.atMs, 1234);
  const byPid = Object.fromEntries(snap.processes.map((p) => [p.pid, [p.class, p.ownTicks]]));
  t.same(byPid, { 500: ['generator+supervisor', 120], 501: ['nats', 40], 502: ['redis', 45], 503: ['worker', 350], 504: ['gateway', 100] }, 'another tree\'s worker (900) is not this run\'s');
  const switches = Object.fromEntries(snap.processes.map((p) => [p.pid, p.switches]));
  t.same(switches[501], { voluntary: 1002, involuntary: 50 }, 'summed over every thread, not the first only');
  t.same(switches[503], { voluntary: 90, involuntary: 9 }, 'a thread gone before its status was read adds nothing');
  t.equal(switches[502], undefined, 'no task list: none');
});

const proc = (pid: number, cls: TreeProcess['class'], ownTicks: number, extra: Partial<TreeProcess> = {}): TreeProcess => ({ pid, ppid: 1, comm: cls, class: cls, ownTicks, reapedTicks: 0, startTicks: 100, ...extra });
const snapshot = (atMs: number, processes: TreeProcess[]): TreeSnapshot => ({ atMs, processes });

t.test('proc: CPU between two snapshots, per role', async (t) => {
  const before = snapshot(1_000, [
    proc(1, 'generator+supervisor', 500),
    proc(2, 'worker', 1000),
    proc(3, 'redis', 200),
    proc(4, 'gateway', 300),
    proc(5, 'worker', 50), // will crash
    proc(6, 'other', 10, { startTicks: 100 }), // its pid will be reused
  ]);
  const after = snapshot(3_000, [
    proc(1, 'generator+supervisor', 650),
    proc(2, 'worker', 1300),
    proc(3, 'redis', 230, { reapedTicks: 40 }), // a fork ran and was waited for
    proc(4, 'gateway', 300),
    proc(7, 'worker', 25), // started within the window
    proc(6, 'other', 3, { startTicks: 900 }), // a new process with an old pid
  ]);
  const d = cpuDelta(before, after, 100);
  t.equal(d.wallS, 2);
  t.same(d.msByClass, { 'generator+supervisor': 1500, worker: 3000 + 250, redis: 700, gateway: 0, nats: 0, other: 30 });
  t.equal(d.totalMs, 1500 + 3250 + 700 + 30);
  t.same(d.processesByClass, { 'generator+supervisor': 1, worker: 2, redis: 1, gateway: 1, nats: 0, other: 1 });
  t.equal(d.ended, 2, 'the crashed worker and the process whose pid was reused');
  t.equal(cpuDelta(before, after, 1000).msByClass.worker, 325, 'ticks per second as getconf says');
  t.equal(cpuDelta(before, before, 100).totalMs, 0);
});

t.test('proc: context switches between two snapshots, per role', async (t) => {
  const sw = (voluntary: number, involuntary: number) => ({ switches: { voluntary, involuntary } });
  const before = snapshot(0, [proc(2, 'worker', 0, sw(100, 10)), proc(3, 'worker', 0, sw(50, 5)), proc(4, 'nats', 0, sw(1000, 0)), proc(5, 'gateway', 0, sw(10, 1))]);
  const after = snapshot(1_000, [
    proc(2, 'worker', 0, sw(160, 40)),
    proc(3, 'worker', 0, sw(40, 8)), // a thread ended and took its counts with it: voluntary floored at 0
    proc(6, 'worker', 0, sw(7, 1)), // started within the window: all of its own
    proc(4, 'nats', 0, sw(1900, 12)),
    proc(5, 'gateway', 0), // unreadable this time
  ]);
  const d = cpuDelta(before, after, 100);
  t.same(d.switchesByClass.worker, { voluntary: 60 + 0 + 7, involuntary: 30 + 3 + 1 });
  t.same(d.switchesByClass.nats, { voluntary: 900, involuntary: 12 });
  t.same(d.switchesByClass.gateway, { voluntary: 0, involuntary: 0 }, 'nothing read, nothing counted (not a negative count)');
  t.same(d.switchesByClass.redis, { voluntary: 0, involuntary: 0 });
  const f = cpuFigures(d, 1_000);
  t.same(f.switchesPerCheckout.worker, { voluntary: 0.067, involuntary: 0.034 });
  t.same(f.switchesPerCheckout.total, { voluntary: 0.967, involuntary: 0.046 }, 'every role summed');
  t.same(cpuFigures(d, 0).switchesPerCheckout.total, { voluntary: 0, involuntary: 0 }, 'no checkouts: no division by zero');
});

t.test('CPU figures: per checkout and cores, from the delta', async (t) => {
  const d = cpuDelta(snapshot(0, [proc(1, 'worker', 0), proc(2, 'nats', 0)]), snapshot(4_000, [proc(1, 'worker', 400), proc(2, 'nats', 100)]), 100);
  const f = cpuFigures(d, 20_000);
  t.equal(f.windowS, 4);
  t.equal(f.msPerCheckout.worker, 0.2, '4,000 ms over 20,000 checkouts');
  t.equal(f.msPerCheckout.nats, 0.05);
  t.equal(f.msPerCheckout.total, 0.25);
  t.equal(f.cores.worker, 1, '4 CPU seconds in 4 s');
  t.equal(f.cores.total, 1.25);
  t.equal(f.cores.gateway, 0);
  t.equal(cpuFigures(d, 0).msPerCheckout.total, 0, 'no checkouts: no division by zero');
});

const point = (okPerS: number, seconds = 1, rps = okPerS): Pick<TimelinePoint, 'okPerS' | 'seconds' | 'rps'> => ({ okPerS, seconds, rps });

t.test('stall seconds: the longest stretch without a 2xx checkout', async (t) => {
  t.equal(stallSeconds([]), 0);
  t.equal(stallSeconds([point(100), point(90), point(120, 0.4)]), 0);
  t.equal(stallSeconds([point(100), point(0), point(0), point(0), point(50)]), 3);
  t.equal(stallSeconds([point(0), point(10), point(0), point(0), point(10), point(0)]), 2, 'the longest of several');
  t.equal(stallSeconds([point(100), point(0), point(0, 0.25)]), 1.25, 'the shorter last window counts its length');
  t.equal(stallSeconds([point(100), point(0, 1, 400), point(100)]), 1, 'a second of 503s only is a stall');
});

function fakeReport(o: { okPerS?: number; completed?: number; p99Ms?: number; maxMs?: number; byStatus?: Record<string, number>; timeline?: number[]; audit?: Report['audit'] } = {}): Pick<Report, 'load' | 'audit'> {
  const latency = { count: 1, meanMs: 20, p50Ms: 18.5, p90Ms: 30, p99Ms: o.p99Ms ?? 45.2, p999Ms: 60, maxMs: o.maxMs ?? 80 };
  return {
    load: {
      completed: o.completed ?? 60_000,
      ok: o.completed ?? 60_000,
      expected: 0,
      errors: 0,
      dropped: 0,
      latency,
      byStatus: o.byStatus ?? { '200': 60_000 },
      byCode: {},
      byKind: [],
      timeline: (o.timeline ?? [9000, 9000]).map((ok, i) => ({ t: i + 1, seconds: 1, rps: ok, okPerS: ok, expectedPerS: 0, errorsPerS: 0, droppedPerS: 0, p50Ms: 1, p99Ms: 2, maxMs: 3 })),
      elapsedS: 6,
      stoppedBy: 'exhausted',
      issued: 60_000,
      throughputPerS: 10_000,
      okPerS: o.okPerS ?? 10_000,
    },
    audit: o.audit ?? { skipped: '--no-audit' },
  };
}

t.test('run figures: from the run\'s report', async (t) => {
  const f = runFigures(fakeReport({ okPerS: 9876.5, p99Ms: 47.1, timeline: [9000, 0, 0, 9000] }), undefined, 30_000);
  t.match(f, { checkouts: 60_000, checkoutsPerS: 9876.5, p50Ms: 18.5, p99Ms: 47.1, maxMs: 80, stallS: 2, answered503: 0, atDeadline: 0, audit: 'skipped: --no-audit', stoppedBy: 'exhausted' });
  t.notOk('cpu' in f);

  const slow = runFigures(fakeReport({ maxMs: 30_004, byStatus: { '200': 59_990, '503': 7, '0': 3 } }), undefined, 30_000);
  t.equal(slow.answered503, 7);
  t.equal(slow.atDeadline, 10, 'the slowest reached the deadline: the 503s and unanswered may have');
  const quick503 = runFigures(fakeReport({ maxMs: 900, byStatus: { '200': 59_990, '503': 10 } }), undefined, 30_000);
  t.same([quick503.answered503, quick503.atDeadline], [10, 0], '503s answered before the deadline did not wait it');
  t.equal(runFigures(fakeReport({ maxMs: 20_000, byStatus: { '503': 1 } }), undefined, 20_000).atDeadline, 1, 'the deadline the system had');

  const audited = fakeReport({ audit: { pass: true, verdict: 'PASS: 60000 orders read', readMs: 100 } as unknown as Report['audit'] });
  t.equal(runFigures(audited, undefined, 30_000).audit, 'PASS: 60000 orders read');
  t.notOk('commits' in f, 'no commit counts in the report: none in the figures');
  const commits = { commitsPerRequest: 0.012, partitionBatchesPerRequest: 1.58 };
  t.same(runFigures({ ...fakeReport({}), commits }, undefined, 30_000).commits, commits, "the report's commit counts");
});

t.test("commit counts: Redis's INFO commandstats, and per request between two readings", async (t) => {
  const stats = (evalsha: number, hmget: number) =>
    new Map([
      ['cmdstat_hset', 'calls=9,usec=90,usec_per_call=10.00,rejected_calls=0,failed_calls=0'],
      ['cmdstat_evalsha', `calls=${evalsha},usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0`],
      ['cmdstat_hmget', `calls=${hmget},usec=1,usec_per_call=1.00,rejected_calls=0,failed_calls=0`],
      ['cmdstat_eval', 'calls=77,usec=1'],
    ]);
  t.same(commitCountsOf(stats(5, 40)), { scriptCalls: 5, metaReads: 40 }, 'EVALSHA and HMGET calls; EVAL (other scripts, a first call) not counted');
  t.same(commitCountsOf(new Map([['cmdstat_ping', 'calls=3,usec=1']])), { scriptCalls: 0, metaReads: 0 }, 'a command never called is 0');
  t.same(commitFigures(commitCountsOf(stats(5, 40)), commitCountsOf(stats(1205, 94_840)), 60_000), { commitsPerRequest: 0.02, partitionBatchesPerRequest: 1.58 });
  t.same(commitFigures({ scriptCalls: 0, metaReads: 0 }, { scriptCalls: 706, metaReads: 94_631 }, 60_000), { commitsPerRequest: 0.01177, partitionBatchesPerRequest: 1.57718 }, 'to five decimals');
  t.equal(commitFigures({ scriptCalls: 0, metaReads: 0 }, { scriptCalls: 3, metaReads: 9 }, 0), undefined, 'no requests, no figures');
});

t.test('median: odd, even, unsorted', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([10, 1, 4, 2]), 3);
  t.equal(median([5]), 5);
  t.ok(Number.isNaN(median([])));
});

const figures = (checkoutsPerS: number, p99Ms: number, audit = 'PASS: ok', cpuMs?: number): RunFigures => ({
  checkouts: 60_000,
  checkoutsPerS,
  p50Ms: 20,
  p99Ms,
  maxMs: p99Ms * 2,
  stallS: 0,
  answered503: 0,
  atDeadline: 0,
  audit,
  stoppedBy: 'exhausted',
  ...(cpuMs !== undefined ? { cpu: cpuFigures(cpuDelta(snapshot(0, [proc(1, 'worker', 0)]), snapshot(6_000, [proc(1, 'worker', cpuMs / 10)]), 100), 60_000) } : {}),
});

t.test('medians over rounds: figure by figure', async (t) => {
  const m = medianFigures([figures(100, 90, 'PASS: a', 6_000), figures(1000, 40, 'PASS: b', 12_000), figures(200, 50, 'PASS: c', 9_000)])!;
  t.equal(m.checkoutsPerS, 200, 'the median, not the mean (433)');
  t.equal(m.p99Ms, 50);
  t.equal(m.audit, 'PASS (3 runs)');
  t.equal(m.stoppedBy, 'exhausted');
  t.equal(m.cpu!.msPerCheckout.worker, 0.15, '9,000 ms over 60,000 checkouts');
  t.equal(m.cpu!.cores.total, 1.5);
  t.equal(medianFigures([figures(1, 1, 'PASS: x'), figures(2, 2, 'FAIL: y')])!.audit, 'PASS, FAIL', 'differing verdicts are all shown');
  t.equal(medianFigures([figures(1, 1), { ...figures(2, 2), stoppedBy: 'interrupted' }])!.stoppedBy, 'exhausted, interrupted', 'a cut-short run shows');
  t.equal(medianFigures([]), undefined);
  t.notOk('cpu' in medianFigures([figures(1, 1)])!, 'no CPU figures: none in the median');
  t.notOk('commits' in medianFigures([figures(1, 1)])!, 'no commit counts: none in the median');
  const counted = (c: number, b: number) => ({ ...figures(1, 1), commits: { commitsPerRequest: c, partitionBatchesPerRequest: b } });
  t.same(medianFigures([counted(0.01, 1.5), counted(0.03, 1.7), figures(1, 1), counted(0.02, 1.6)])!.commits, { commitsPerRequest: 0.02, partitionBatchesPerRequest: 1.6 }, 'the median of the runs that counted');
});

const run = (label: string, round: number, f?: RunFigures): ScaleRun => {
  const [workers, partitions] = label.split('x').map(Number);
  return { round, config: { workers: workers!, partitions: partitions! }, label, exitCode: f ? 0 : 2, ...(f ? { figures: f } : { error: 'could not start' }) };
};

t.test('ratios: from the medians of the configurations that were run', async (t) => {
  const configs = parseConfigs('1x2,1x8,2x8,4x64');
  const runs = [run('1x2', 1, figures(9000, 40, 'PASS', 6_000)), run('1x8', 1, figures(4000, 80, 'PASS', 9_000)), run('2x8', 1, figures(5000, 60, 'PASS', 12_000)), run('4x64', 1)];
  const summaries = summarizeConfigs(configs, runs);
  t.same(summaries.map((s) => [s.label, s.runs, s.failed]), [['1x2', 1, 0], ['1x8', 1, 0], ['2x8', 1, 0], ['4x64', 0, 1]]);
  const ratios = ratioTable(summaries);
  t.same(ratios.map((r) => r.name), ['2 workers ÷ 1 worker at 8 partitions'], 'the 64-partition ratios need 1x64, which was not run');
  t.match(ratios[0], { over: '2x8', under: '1x8', checkoutsPerS: 1.25, p99Ms: 0.75, cpuMsPerCheckout: 1.333, cores: 1.333 });

  const all = ratioTable(summarizeConfigs(parseConfigs('1x2,1x64,2x64,4x64'), [run('1x2', 1, figures(9000, 40)), run('1x64', 1, figures(3000, 120)), run('2x64', 1, figures(4500, 100)), run('4x64', 1, figures(2400, 300))]));
  t.same(
    all.map((r) => [r.name, r.checkoutsPerS]),
    [
      ['2 workers ÷ 1 worker at 64 partitions', 1.5],
      ['64 partitions ÷ 2 partitions at 1 worker', 0.333],
      ['4 workers ÷ 1 worker at 64 partitions', 0.8],
    ],
  );
  t.notOk('cpuMsPerCheckout' in all[0]!, 'no CPU figures, no CPU ratio');
});

t.test('tables: the summary and the report', async (t) => {
  const configs = parseConfigs('1x8,2x8');
  const runs = [run('1x8', 1, figures(4000, 80, 'PASS: fine', 9_000)), run('2x8', 1, figures(5000, 60, 'PASS: fine', 12_000)), run('1x8', 2), run('2x8', 2, figures(5200, 62, 'PASS: fine', 12_000))];
  const summaries = summarizeConfigs(configs, runs);
  const text = renderSummary({ configs: summaries, ratios: ratioTable(summaries) });
  t.match(text, /config\s+workers\s+partitions\s+runs\s+checkouts\/s/);
  t.match(text, /\n1x8\s+1\s+8\s+1 \(\+1 failed\)\s+4,000\s/);
  t.match(text, /\n2x8\s+2\s+8\s+2\s+5,100\s/, 'the median of 5,000 and 5,200');
  t.match(text, /2 workers ÷ 1 worker at 8 partitions\s+2x8 ÷ 1x8\s+1\.28/);
  t.match(
    text,
    /\bworker\s+gateway\s+nats\s+redis\s+generator\+supervisor\s+other\s+total\n1x8\s+0\.150 \(1\.50\)\s+0\.000 \(0\.00\)(\s+0\.000 \(0\.00\)){4}\s+0\.150 \(1\.50\)\n/,
    'the CPU table: each role, then the total; ms per checkout and (cores)',
  );

  t.match(
    text,
    /context switches per checkout by process during the load \(voluntary \+ involuntary\)\nconfig\s+worker\s+gateway.*\n1x8\s+0\.000 \+ 0\.000\s/,
    'the context switch table',
  );
  const switching = summarizeConfigs(configs, [
    run('1x8', 1, figures(4000, 80)),
    run('2x8', 1, {
      ...figures(5000, 60, 'PASS', 12_000),
      cpu: cpuFigures(cpuDelta(snapshot(0, [proc(1, 'worker', 0, { switches: { voluntary: 0, involuntary: 0 } })]), snapshot(6_000, [proc(1, 'worker', 1_200, { switches: { voluntary: 30_000, involuntary: 6_000 } })]), 100), 60_000),
    }),
  ]);
  t.same(
    switchesTable(switching).rows,
    [['1x8', '-', '-', '-', '-', '-', '-', '-'], ['2x8', '0.500 + 0.100', '0.000 + 0.000', '0.000 + 0.000', '0.000 + 0.000', '0.000 + 0.000', '0.000 + 0.000', '0.500 + 0.100']],
    'per checkout, voluntary + involuntary; - without CPU figures',
  );

  t.notMatch(text, /Redis commits/, 'no commit counts: no table of them');
  const withCommits = summarizeConfigs(configs, [
    run('1x8', 1, { ...figures(4000, 80), commits: { commitsPerRequest: 0.0125, partitionBatchesPerRequest: 0.6 } }),
    run('2x8', 1, figures(5000, 60)),
  ]);
  t.same(commitsTable(withCommits).rows, [['1x8', '0.013', '0.60', '80'], ['2x8', '-', '-', '-']], 'per checkout, and checkouts per commit');
  t.match(renderSummary({ configs: withCommits, ratios: [] }), /Redis commits during the load\nconfig\s+commits\/checkout\s+partition batches\/checkout\s+checkouts\/commit\n1x8\s+0\.013\s+0\.60\s+80\n/);

  const report: ScaleReport = {
    scenario: 'scale',
    command: 'npm run bench -- scale --configs 1x8,2x8',
    startedAt: '2026-01-01T00:00:00.000Z',
    machine: { cores: 2, cpuModel: 'Test CPU', memoryGiB: 4, node: 'v20.0.0', kernel: 'linux 6' },
    options: scale('--configs', '1x8,2x8', '--rounds', '2'),
    requestDeadlineMs: 30_000,
    clockTicksPerS: 100,
    inheritedEnv: { SHOP_REDIS_APPENDFSYNC: 'always' },
    runs: [{ ...runs[0]!, reportDir: '/out/x-scale/r1-1x8/run' }, ...runs.slice(1)],
    configs: summaries,
    ratios: ratioTable(summaries),
  };
  const md = renderScaleMarkdown(report, (d) => d.replace('/out/x-scale/', ''));
  t.match(md, /Command: `npm run bench -- scale --configs 1x8,2x8`/);
  t.match(md, /Machine: 2 cores, Test CPU/);
  t.match(md, /inherited SHOP_REDIS_APPENDFSYNC=always/);
  t.match(md, /\| 1x8 \| 1 \| 8 \| 1 \(\+1 failed\) \|/);
  t.match(md, /\| 2 \| 1x8 \| - \| .* no figures: could not start \|/, 'the failed run is listed');
  t.match(md, /r1-1x8\/run/, 'each run links its own report');
  t.match(md, /## Redis commits\n\n\| config \| commits\/checkout \| partition batches\/checkout \| checkouts\/commit \|/);
});

t.test('textTable: text left, figures right', async (t) => {
  t.equal(textTable({ head: ['name', 'n'], rows: [['a', '1'], ['bbb', '1,000']] }), 'name      n\na         1\nbbb   1,000');
});
