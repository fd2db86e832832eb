import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { envName, type Config } from '../../src/config.js';
import { reapOnExit } from '../../src/stack/processes.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'main.js');

/** The SHOP_* environment that makes a child process load exactly this config. */
export function configEnv(config: Config): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(config)) env[envName(key)] = Array.isArray(value) ? value.join(',') : String(value);
  return env;
}

export interface Child {
  readonly process: ChildProcess;
  /** Resolves with the signal (or exit code) when the process has exited. */
  readonly exited: Promise<string>;
  output(): string;
  kill(signal?: NodeJS.Signals): Promise<string>;
}

/** Runs `main.js <role>` as a real child process with the given config; its output is kept for assertions. */
export function spawnRole(role: 'worker' | 'gateway', config: Config, extraEnv: Record<string, string> = {}): Child {
  const child = spawn(process.execPath, [MAIN, role], {
    env: { PATH: process.env.PATH ?? '', ...configEnv(config), ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<string>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? String(code))));
  const killOnExit = () => child.kill('SIGKILL');
  process.on('exit', killOnExit);
  // Killed from outside, this process has no 'exit' event: the reaper (src/stack/processes.ts) stops the child then.
  const pid = child.pid;
  if (pid !== undefined) reapOnExit(pid);
  child.on('exit', () => {
    process.off('exit', killOnExit);
    if (pid !== undefined) reapOnExit(pid, false);
  });
  return {
    process: child,
    exited,
    output: () => out,
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
