/**
 * A disk that stalls, for one process: the thread that fsyncs Redis's AOF (`bio_aof_fsync`) frozen by a cgroup v1
 * freezer of its own, while every other thread runs. An fsync started then stays under way until thaw(), as one held
 * up by a disk busy with other writers.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomToken, waitFor } from './servers.js';

const FREEZER = '/sys/fs/cgroup/freezer';

/** Whether this machine has the cgroup v1 freezer (threads can be frozen one by one) and we may use it (root). */
export function freezerAvailable(): boolean {
  return process.getuid?.() === 0 && existsSync(join(FREEZER, 'tasks'));
}

/** The id of `pid`'s thread named `name`. */
async function threadId(pid: number, name: string): Promise<number> {
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    if ((await readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8')).trim() === name) return Number(tid);
  }
  throw new Error(`process ${pid} has no thread named ${name}`);
}

export interface Stall {
  /** Lets the thread go on (idempotent) and removes its freezer. */
  thaw(): Promise<void>;
}

/** Freezes redis-server `pid`'s AOF fsync thread; resolves once it is frozen. */
export async function stallAofFsync(pid: number): Promise<Stall> {
  const tid = await threadId(pid, 'bio_aof_fsync');
  const group = join(FREEZER, `shop-test-${randomToken()}`);
  await mkdir(group);
  await writeFile(join(group, 'tasks'), String(tid));
  await writeFile(join(group, 'freezer.state'), 'FROZEN');
  await waitFor(async () => (await readFile(join(group, 'freezer.state'), 'utf8')).trim() === 'FROZEN', { deadlineMs: 5000, intervalMs: 10, what: `thread ${tid} of ${pid} to be frozen` });
  let thawed: Promise<void> | undefined;
  return {
    thaw: () =>
      (thawed ??= (async () => {
        await writeFile(join(group, 'freezer.state'), 'THAWED');
        // The cgroup can go once its thread left it: when the process exited, or moved back to the root group.
        if ((await readFile(join(group, 'tasks'), 'utf8')).trim() !== '') await writeFile(join(FREEZER, 'tasks'), String(tid)).catch(() => undefined);
        await waitFor(async () => (await readFile(join(group, 'tasks'), 'utf8')).trim() === '', { deadlineMs: 5000, intervalMs: 10, what: `the freezer of thread ${tid} to be empty` });
        await rmdir(group);
      })()),
  };
}
