/**
 * Child processes of the local stack, shared by the supervisor (`npm start`) and the test helpers:
 * finding nats-server and redis-server, their command lines, spawning with line-by-line output, stopping with a grace period, and a reaper that ends every child
 * if this process dies in any way (even SIGKILL), so a crashed run leaves nothing behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { createInterface } from 'node:readline';

/** How long the reaper waits after SIGTERM before it SIGKILLs what is left of an orphaned child. */
const REAPER_GRACE_MS = 5000;
/** Output lines kept per child for error messages. */
const TAIL_LINES_MAX = 50;

/** Where the Debian packages put the servers; /usr/sbin is often not on a non-root PATH. */
const EXTRA_BIN_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin'];

export class MissingBinaryError extends Error {
  override name = 'MissingBinaryError';
}

/** The absolute path of `name` on PATH or in /usr/sbin; throws with the command that installs it. */
export function findBinary(name: string, path: string = process.env.PATH ?? ''): string {
  if (name.includes('/')) return name;
  for (const dir of [...path.split(delimiter).filter(Boolean), ...EXTRA_BIN_DIRS]) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  throw new MissingBinaryError(
    `${name} not found on PATH or in ${EXTRA_BIN_DIRS.join(', ')}. ` +
      'Run `bash scripts/ensure-deps.sh`, or install the Debian packages: sudo apt-get update && sudo apt-get install -y nats-server redis-server',
  );
}

/** nats-server shuts down gracefully on both, but exits with code 1 after SIGTERM and 0 after SIGINT. */
export const NATS_STOP_SIGNAL: NodeJS.Signals = 'SIGINT';

/**
 * nats-server arguments: JetStream on, loopback only (or `host`: a node on an address of its own, as the fault tests
 * run each node in a network namespace). Flags override the same settings in `configFile`.
 */
export function natsArgs(o: { port: number; storeDir: string; configFile?: string; pidFile?: string; host?: string }): string[] {
  return [
    ...(o.configFile ? ['-c', o.configFile] : []),
    '-js',
    '-a', o.host ?? '127.0.0.1',
    '-p', String(o.port),
    '-sd', o.storeDir,
    ...(o.pidFile ? ['-P', o.pidFile] : []),
  ];
}

/**
 * redis-server arguments: loopback only, AOF on (the state's durability), RDB snapshots off (the AOF is
 * the one copy; snapshots would only fork and stall), log to stdout, never daemonize. Users and passwords come
 * from `aclFile` (a file, not arguments: argv is world-readable in /proc).
 */
export function redisArgs(o: { port: number; dir: string; appendfsync: 'always' | 'everysec' | 'no'; pidFile?: string; aclFile?: string }): string[] {
  return [
    '--port', String(o.port),
    '--bind', '127.0.0.1',
    '--protected-mode', 'yes',
    '--dir', o.dir,
    '--appendonly', 'yes',
    '--appendfsync', o.appendfsync,
    '--save', '',
    '--daemonize', 'no',
    '--supervised', 'no',
    '--logfile', '',
    ...(o.pidFile ? ['--pidfile', o.pidFile] : []),
    ...(o.aclFile ? ['--aclfile', o.aclFile] : []),
  ];
}

// ---- the reaper -------------------------------------------------------------------------------------

/**
 * A small detached process that reads "add"/"del" lines for pids (and temp dirs) on its stdin. When the
 * stdin closes, i.e. this process is gone however it died, it SIGTERMs what is still registered,
 * SIGKILLs it after a grace period and removes the registered dirs. Detached, so a Ctrl-C to the
 * terminal's process group does not end it before it has done its work.
 */
const REAPER_SOURCE = `
const { readFileSync, rmSync } = require('node:fs');
const pids = new Set(), dirs = new Set();
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => {});
let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  buf += d;
  for (let i; (i = buf.indexOf('\\n')) >= 0; buf = buf.slice(i + 1)) {
    const m = JSON.parse(buf.slice(0, i));
    const set = m.pid ? pids : dirs, key = m.pid ?? m.dir;
    if (m.op === 'add') set.add(key); else set.delete(key);
  }
});
const alive = (pid) => {
  try { process.kill(pid, 0); } catch { return false; }
  try { return !/^\\d+ \\(.*\\) Z/s.test(readFileSync('/proc/' + pid + '/stat', 'utf8')); } catch { return true; }
};
const signal = (sig) => { for (const pid of pids) try { process.kill(pid, sig); } catch {} };
const finish = () => {
  signal('SIGKILL');
  for (const dir of dirs) try { rmSync(dir, { recursive: true, force: true, maxRetries: 5 }); } catch {}
  process.exit(0);
};
const reap = () => {
  signal('SIGTERM');
  const deadline = Date.now() + ${REAPER_GRACE_MS};
  const poll = () => ([...pids].some(alive) && Date.now() < deadline ? setTimeout(poll, 50) : finish());
  poll();
};
process.stdin.on('end', reap);
process.stdin.on('error', reap);
`;

let reaper: ChildProcess | undefined;
const live = new Set<ChildProcess>();

function tellReaper(message: { op: 'add' | 'del'; pid?: number; dir?: string }): void {
  if (!reaper) {
    reaper = spawn(process.execPath, ['-e', REAPER_SOURCE], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
    reaper.on('error', () => {
      reaper = undefined;
    });
    reaper.stdin?.on('error', () => {});
    // Neither the reaper nor its pipe may keep this process alive.
    reaper.unref();
    (reaper.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    // On an orderly exit (or process.exit after a crash) SIGTERM what is left at once; the reaper escalates.
    process.once('exit', () => {
      for (const child of live) child.kill('SIGTERM');
    });
  }
  reaper.stdin?.write(JSON.stringify(message) + '\n');
}

/**
 * Registers a process this one spawned by other means (the tests' workers and gateways) with the reaper: SIGTERMed,
 * then SIGKILLed, if this process dies without stopping it (`register` false once it has exited).
 */
export function reapOnExit(pid: number, register = true): void {
  tellReaper({ op: register ? 'add' : 'del', pid });
}

/** Registers a temp dir that the reaper removes if this process dies without removing it. */
export function reapDirOnExit(dir: string, register = true): void {
  tellReaper({ op: register ? 'add' : 'del', dir });
}

// ---- spawning and stopping --------------------------------------------------------------------------

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the process could not be started at all (e.g. ENOENT). */
  error?: Error;
}

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  readonly pid: number | undefined;
  /** Resolves once the process has exited (or failed to start). Never rejects. */
  readonly exited: Promise<Exit>;
  /** The exit, once it has happened. */
  exit(): Exit | undefined;
  /** The last lines of its output, for error messages. */
  tail(): string[];
}

export interface SpawnOptions {
  args: string[];
  /** Added to this process's environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** In its own process group, so a Ctrl-C to the terminal reaches only the supervisor, which stops children in order. */
  detached?: boolean;
  /** Called with every complete line of output. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
}

/** Spawns a child whose output is read line by line (never left to fill a pipe), registered with the reaper. */
export function spawnChild(name: string, command: string, o: SpawnOptions): Child {
  const proc = spawn(command, o.args, {
    env: { ...process.env, ...o.env },
    cwd: o.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: o.detached ?? false,
  });
  const lines: string[] = [];
  let exit: Exit | undefined;
  for (const stream of ['stdout', 'stderr'] as const) {
    const source = proc[stream];
    if (!source) continue;
    createInterface({ input: source, crlfDelay: Infinity }).on('line', (line) => {
      lines.push(line);
      if (lines.length > TAIL_LINES_MAX) lines.shift();
      o.onLine?.(line, stream);
    });
  }
  const exited = new Promise<Exit>((resolve) => {
    proc.on('error', (error) => {
      // 'error' without a pid: it never ran. With a pid, a failed kill(); the 'exit' event still follows.
      if (proc.pid === undefined) resolve((exit = { code: null, signal: null, error }));
    });
    proc.once('exit', (code, signal) => resolve((exit = { code, signal })));
  }).then((e) => {
    live.delete(proc);
    if (proc.pid !== undefined) tellReaper({ op: 'del', pid: proc.pid });
    return e;
  });
  if (proc.pid !== undefined) {
    live.add(proc);
    tellReaper({ op: 'add', pid: proc.pid });
  }
  return {
    name,
    process: proc,
    pid: proc.pid,
    exited,
    exit: () => exit,
    tail: () => [...lines],
  };
}

/** Describes an exit for a log line: "code 1", "signal SIGKILL", "spawn error: ENOENT". */
export function describeExit(e: Exit): string {
  if (e.error) return `could not start: ${e.error.message}`;
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}

/**
 * `signal` (SIGTERM), then wait up to `graceMs` for the exit, then SIGKILL and wait for that exit too.
 * Resolves with the exit and whether it had to be killed.
 */
export async function stopChild(child: Child, graceMs: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<{ exit: Exit; killed: boolean }> {
  if (child.exit()) return { exit: child.exit()!, killed: false };
  child.process.kill(signal);
  let timer: NodeJS.Timeout | undefined;
  const graceful = await Promise.race([
    child.exited.then(() => true),
    new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), graceMs))),
  ]);
  clearTimeout(timer);
  if (!graceful) child.process.kill('SIGKILL');
  return { exit: await child.exited, killed: !graceful };
}

/** /proc/<pid>/stat: "pid (comm) state ..."; comm may contain spaces and parentheses. */
const ZOMBIE = /^\d+ \(.*\) Z/s;

/** A process with this pid runs. A zombie (exited, not yet reaped by its parent) counts as gone. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return !ZOMBIE.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    // Reaped between the two calls; or no /proc (not Linux), where kill(pid, 0) is all we know.
    return !existsSync('/proc/self/stat');
  }
}

/** Rejects (through the signal) as soon as `child` exits, with its last output lines. For readiness waits. */
export function abortOnExit(child: Child, what: string): AbortController {
  const controller = new AbortController();
  void child.exited.then((e) => {
    const tail = child.tail().slice(-15).map((l) => `  ${child.name}| ${l}`).join('\n');
    controller.abort(new Error(`${what} exited (${describeExit(e)}) before it was ready${tail ? `; its last output:\n${tail}` : ''}`));
  });
  return controller;
}
