/**
 * CPU time of a process tree from Linux's /proc: a snapshot of every process below a root (by ppid), each
 * classified by role (nats, redis, worker, gateway, the bench process itself), and the CPU and context switches
 * between two snapshots per role. The parsing, classification and arithmetic are pure; `snapshotTree` reads /proc
 * (or a directory laid out like it, for tests).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';

/** The roles CPU is reported by; `generator+supervisor` is the bench process that runs the load and the supervisor in-process. */
export const PROCESS_CLASSES = ['worker', 'gateway', 'nats', 'redis', 'generator+supervisor', 'other'] as const;
export type ProcessClass = (typeof PROCESS_CLASSES)[number];

/** What Linux reports when getconf is missing: USER_HZ has been 100 on every mainstream architecture. */
const DEFAULT_CLOCK_TICKS_PER_S = 100;

/** The fields of /proc/<pid>/stat this module uses. CPU times are in clock ticks. */
export interface ProcStat {
  pid: number;
  comm: string;
  ppid: number;
  /** Field 14 + 15: this process's own user and system time (all its threads). */
  ownTicks: number;
  /** Field 16 + 17: time of its children that have ended and been waited for (e.g. Redis' AOF rewrite fork). */
  reapedTicks: number;
  /** Field 22, ticks after boot: with the pid, tells a process from a later one that got the same pid. */
  startTicks: number;
}

/** Parses one /proc/<pid>/stat line; undefined if it is not one. comm may hold spaces and parentheses: it ends at the last ')'. */
export function parseStat(text: string): ProcStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const pid = Number(text.slice(0, open).trim());
  // After the comm, field 3 (state) is at index 0, so field n is at n - 3.
  const f = text.slice(close + 1).trim().split(/\s+/);
  const field = (n: number) => Number(f[n - 3]);
  const stat = {
    pid,
    comm: text.slice(open + 1, close),
    ppid: field(4),
    ownTicks: field(14) + field(15),
    reapedTicks: field(16) + field(17),
    startTicks: field(22),
  };
  const numbers = [stat.pid, stat.ppid, stat.ownTicks, stat.reapedTicks, stat.startTicks];
  return numbers.every(Number.isFinite) && Number.isInteger(pid) ? stat : undefined;
}

/** /proc/<pid>/cmdline: arguments separated (and ended) by NUL. A process that rewrote its title may show one string with spaces. */
export function parseCmdline(text: string): string[] {
  return text.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
}

/**
 * The role of one process of the bench's tree. `isRoot`: the bench process the tree hangs from. nats-server
 * and redis-server are recognised by name (comm or argv[0]; Redis rewrites its argv into "redis-server
 * 127.0.0.1:port" and names its forks redis-rdb-bgsave, redis-aof-rewrite), node processes by the role
 * argument after main.js.
 */
export function classifyProcess(p: { comm: string; argv: readonly string[] }, isRoot: boolean): ProcessClass {
  if (isRoot) return 'generator+supervisor';
  const program = basename((p.argv[0] ?? '').split(' ')[0] ?? '');
  const names = [p.comm, program];
  if (names.some((n) => n.startsWith('nats-server'))) return 'nats';
  if (names.some((n) => n.startsWith('redis-'))) return 'redis';
  const main = p.argv.findIndex((a) => basename(a) === 'main.js');
  if (main >= 0) {
    const role = p.argv[main + 1];
    if (role === 'worker' || role === 'gateway') return role;
  }
  return 'other';
}

/**
 * Context switches of a thread or a process: `voluntary` when it waited (for a socket, a lock, a timer) and was
 * woken again, `involuntary` when the scheduler took the CPU from it while it could still run (another process's
 * turn on a busy machine).
 */
export interface Switches {
  voluntary: number;
  involuntary: number;
}

/** The two context switch counters of a /proc/<pid>/task/<tid>/status file; undefined if either is missing. */
export function parseSwitches(text: string): Switches | undefined {
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s*(\\d+)\\s*$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const voluntary = field('voluntary_ctxt_switches');
  const involuntary = field('nonvoluntary_ctxt_switches');
  return voluntary === undefined || involuntary === undefined ? undefined : { voluntary, involuntary };
}

/** One process of a snapshot: its stat, its role, and the context switches of its threads alive at the time. */
export interface TreeProcess extends ProcStat {
  class: ProcessClass;
  switches?: Switches;
}

export interface TreeSnapshot {
  /** performance.now() when it was taken. */
  atMs: number;
  processes: TreeProcess[];
}

/** The root and every process below it, by ppid. Pure: `stats` is every process of the machine. */
export function treeOf(stats: readonly ProcStat[], rootPid: number): ProcStat[] {
  const children = new Map<number, ProcStat[]>();
  for (const s of stats) {
    const list = children.get(s.ppid);
    if (list) list.push(s);
    else children.set(s.ppid, [s]);
  }
  const root = stats.find((s) => s.pid === rootPid);
  if (!root) return [];
  const tree: ProcStat[] = [];
  const queue = [root];
  const seen = new Set<number>();
  for (let p = queue.shift(); p; p = queue.shift()) {
    if (seen.has(p.pid)) continue;
    seen.add(p.pid);
    tree.push(p);
    queue.push(...(children.get(p.pid) ?? []));
  }
  return tree;
}

const readOrUndefined = (file: string): string | undefined => {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined; // the process ended between the listing and the read
  }
};

/** Reads `procDir` (/proc) now: the process tree under `rootPid`, classified. Empty if the root is gone. */
export function snapshotTree(rootPid: number, procDir = '/proc', nowMs: () => number = () => performance.now()): TreeSnapshot {
  const atMs = nowMs();
  const stats: ProcStat[] = [];
  for (const name of readdirSync(procDir)) {
    if (!/^\d+$/.test(name)) continue;
    const text = readOrUndefined(join(procDir, name, 'stat'));
    const stat = text === undefined ? undefined : parseStat(text);
    if (stat) stats.push(stat);
  }
  const processes = treeOf(stats, rootPid).map((s) => {
    const argv = parseCmdline(readOrUndefined(join(procDir, String(s.pid), 'cmdline')) ?? '');
    const switches = threadSwitches(join(procDir, String(s.pid)));
    return { ...s, class: classifyProcess({ comm: s.comm, argv }, s.pid === rootPid), ...(switches ? { switches } : {}) };
  });
  return { atMs, processes };
}

/**
 * The context switches of every thread of the process at `dir` (/proc/<pid>/status counts its first thread only;
 * nats-server and redis-server do their work on others). Undefined if the process is gone or has no task list.
 */
function threadSwitches(dir: string): Switches | undefined {
  let tids: string[];
  try {
    tids = readdirSync(join(dir, 'task'));
  } catch {
    return undefined;
  }
  const sum: Switches = { voluntary: 0, involuntary: 0 };
  for (const tid of tids) {
    const text = readOrUndefined(join(dir, 'task', tid, 'status'));
    const s = text === undefined ? undefined : parseSwitches(text);
    if (!s) continue; // the thread ended between the listing and the read
    sum.voluntary += s.voluntary;
    sum.involuntary += s.involuntary;
  }
  return sum;
}

/** Whether this machine has a /proc to read CPU times from. */
export function procAvailable(procDir = '/proc'): boolean {
  return readOrUndefined(join(procDir, 'self', 'stat')) !== undefined;
}

/** Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`). */
export function clockTicksPerS(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    if (Number.isInteger(n) && n > 0) return n;
  } catch {
    // no getconf: fall through
  }
  return DEFAULT_CLOCK_TICKS_PER_S;
}

export interface CpuDelta {
  /** Wall time between the snapshots. */
  wallS: number;
  /** CPU used between the snapshots, per role. */
  msByClass: Record<ProcessClass, number>;
  /** Context switches between the snapshots, per role (counted like the CPU; see cpuDelta). */
  switchesByClass: Record<ProcessClass, Switches>;
  totalMs: number;
  /** Processes per role in the second snapshot. */
  processesByClass: Record<ProcessClass, number>;
  /** Processes of the first snapshot gone by the second (a crash, a restart, a Redis fork). */
  ended: number;
}

const zeroByClass = (): Record<ProcessClass, number> => Object.fromEntries(PROCESS_CLASSES.map((c) => [c, 0])) as Record<ProcessClass, number>;

/**
 * The CPU between two snapshots of one tree, per role. A process counts its own time and that of its
 * children that ended and were waited for in between (so a Redis fork that starts and ends in the window is
 * Redis' CPU); one that started in between counts from zero. One that ended in between adds nothing itself:
 * its time reaches its parent's reaped time, which then also carries what it used before the first snapshot
 * (`ended` says when that happened). Context switches the same way, except that nothing reaps them: those of a
 * process or a thread that ended in between are lost (a thread's are taken from its process's sum, floored at 0).
 */
export function cpuDelta(before: TreeSnapshot, after: TreeSnapshot, ticksPerS: number): CpuDelta {
  const key = (p: ProcStat) => `${p.pid}@${p.startTicks}`;
  const earlier = new Map(before.processes.map((p) => [key(p), p]));
  const msByClass = zeroByClass();
  const processesByClass = zeroByClass();
  const switchesByClass = Object.fromEntries(PROCESS_CLASSES.map((c) => [c, { voluntary: 0, involuntary: 0 }])) as Record<ProcessClass, Switches>;
  const msPerTick = 1000 / ticksPerS;
  for (const p of after.processes) {
    const was = earlier.get(key(p));
    const ticks = p.ownTicks + p.reapedTicks - (was ? was.ownTicks + was.reapedTicks : 0);
    msByClass[p.class] += Math.max(0, ticks) * msPerTick;
    processesByClass[p.class]++;
    const sum = switchesByClass[p.class];
    sum.voluntary += Math.max(0, (p.switches?.voluntary ?? 0) - (was?.switches?.voluntary ?? 0));
    sum.involuntary += Math.max(0, (p.switches?.involuntary ?? 0) - (was?.switches?.involuntary ?? 0));
  }
  const later = new Set(after.processes.map(key));
  const ended = before.processes.filter((p) => !later.has(key(p))).length;
  const totalMs = PROCESS_CLASSES.reduce((sum, c) => sum + msByClass[c], 0);
  return { wallS: (after.atMs - before.atMs) / 1000, msByClass, switchesByClass, totalMs, processesByClass, ended };
}
