/**
 * A network of its own for each server of a fault test: one network namespace per node, each joined by a veth pair
 * to a bridge in the root namespace, on a private /24 picked at random among those no interface or route of this
 * machine uses. Processes in the root namespace (workers, gateways, the test) reach every node at its address
 * directly (the bridge has an address on the subnet; nothing is routed or forwarded). `cut(i)` takes node i's link
 * down: its packets, to the other nodes and to the clients, go nowhere (nothing is reset: a cut, not a crash);
 * `heal(i)` brings it back.
 *
 * Only what this helper made is touched: its namespaces, its veths and its bridge, all named with a random tag. They
 * are removed in the test's teardown, on this process's exit, and, should this process die by SIGKILL, by a small
 * detached watcher that removes them once this process's end of its pipe closes.
 *
 * Needs root and `ip` (iproute2); `startNetLab` says why it cannot when it cannot, and the caller falls back.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { Test } from 'tap';
import { findBinary } from '../../src/stack/processes.js';

const run = promisify(execFile);

export interface NetLab {
  /** Node i's address (in its namespace). */
  address(i: number): string;
  /** Node i's namespace name. */
  namespace(i: number): string;
  /** `command args` run inside node i's namespace (`ip netns exec` execs it: the pid is the command's own). */
  wrap(i: number, command: string, args: string[]): { command: string; args: string[] };
  /** Node i's link down: cut off from the other nodes and from every client. */
  cut(i: number): Promise<void>;
  /** Node i's link up again. */
  heal(i: number): Promise<void>;
  /** The subnet, for messages: 10.a.b.0/24. */
  readonly subnet: string;
  /** Removes every namespace, veth and the bridge this lab made. Idempotent. */
  close(): void;
}

/** Addresses from here on the subnet: the bridge is .1, node i is .(NODE_HOST_FIRST + i). */
const NODE_HOST_FIRST = 10;

/** The IPv4 prefixes in use on this machine: every address's network and every route, as [network, length]. */
async function prefixesInUse(ip: string): Promise<[number, number][]> {
  const toNumber = (a: string) => a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
  const found: [number, number][] = [];
  const { stdout: addrs } = await run(ip, ['-4', '-o', 'addr', 'show']);
  const { stdout: routes } = await run(ip, ['-4', 'route', 'show', 'table', 'all']);
  for (const m of `${addrs}\n${routes}`.matchAll(/(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?/g)) {
    found.push([toNumber(m[1]!), m[2] === undefined ? 32 : Number(m[2])]);
  }
  return found;
}

/** A 10.a.b.0/24 that overlaps nothing in use (a in 200..254). */
async function freeSubnet(ip: string): Promise<[number, number]> {
  const inUse = await prefixesInUse(ip);
  for (let attempt = 0; attempt < 100; attempt++) {
    const a = 200 + Math.floor(Math.random() * 55);
    const b = Math.floor(Math.random() * 256);
    const net = (10 * 256 + a) * 65536 + b * 256;
    const overlaps = inUse.some(([addr, len]) => {
      // Two prefixes overlap when the shorter one contains the longer one's network.
      const shorter = Math.min(len, 24);
      const mask = shorter === 0 ? 0 : (0xffffffff << (32 - shorter)) >>> 0;
      return ((addr & mask) >>> 0) === ((net & mask) >>> 0);
    });
    if (!overlaps) return [a, b];
  }
  throw new Error('found no free 10.x.y.0/24 for the fault tests’ network namespaces');
}

/**
 * A detached process that runs the lab's removal commands once this process's end of the pipe closes, however it
 * ended; told "done" (after an orderly removal) it exits without running them.
 */
function watchForDeath(commands: string[][]): { done(): void } {
  const source = `
const { execFileSync } = require('node:child_process');
const commands = ${JSON.stringify(commands)};
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => {});
let buf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { buf += d; if (buf.includes('done')) process.exit(0); });
const clean = () => { for (const [c, ...a] of commands) { try { execFileSync(c, a, { stdio: 'ignore' }); } catch {} } process.exit(0); };
process.stdin.on('end', clean);
process.stdin.on('error', clean);
`;
  const watcher = spawn(process.execPath, ['-e', source], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
  watcher.on('error', () => {});
  watcher.stdin.on('error', () => {});
  watcher.unref();
  (watcher.stdin as unknown as { unref?: () => void }).unref?.();
  return { done: () => watcher.stdin.end('done\n') };
}

/**
 * A lab of `nodes` namespaces, or the reason there cannot be one here (not root, no `ip`, creating a namespace
 * failed). Removed in `t`'s teardown (register it before the servers that run in it, so they stop first).
 */
export async function startNetLab(t: Test, nodes: number): Promise<NetLab | { unavailable: string }> {
  if (process.getuid?.() !== 0) return { unavailable: 'not running as root' };
  let ip: string;
  try {
    ip = findBinary('ip');
  } catch {
    return { unavailable: 'no `ip` command (iproute2)' };
  }
  const tag = randomBytes(2).toString('hex');
  const bridge = `sf${tag}br`;
  const hostSide = (i: number) => `sf${tag}h${i}`;
  const nodeSide = (i: number) => `sf${tag}n${i}`;
  const namespace = (i: number) => `shopfault-${tag}-${i}`;
  let subnet: [number, number];
  try {
    subnet = await freeSubnet(ip);
  } catch (err) {
    return { unavailable: (err as Error).message };
  }
  const base = `10.${subnet[0]}.${subnet[1]}`;
  const address = (i: number) => `${base}.${NODE_HOST_FIRST + i}`;

  // Deleting a host-side veth deletes its pair; the bridge and the namespaces go by name.
  const removal = [...Array.from({ length: nodes }, (_, i) => [ip, 'link', 'del', hostSide(i)]), [ip, 'link', 'del', bridge], ...Array.from({ length: nodes }, (_, i) => [ip, 'netns', 'del', namespace(i)])];
  const watcher = watchForDeath(removal);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    for (const [c, ...a] of removal) {
      try {
        execFileSync(c!, a, { stdio: 'ignore' });
      } catch {
        // not made, or gone already
      }
    }
    watcher.done();
  };
  process.once('exit', close);
  t.teardown(close);

  const ipc = (...args: string[]) => run(ip, args);
  try {
    await ipc('link', 'add', bridge, 'type', 'bridge');
    await ipc('addr', 'add', `${base}.1/24`, 'dev', bridge);
    await ipc('link', 'set', bridge, 'up');
    for (let i = 0; i < nodes; i++) {
      await ipc('netns', 'add', namespace(i));
      await ipc('link', 'add', hostSide(i), 'type', 'veth', 'peer', 'name', nodeSide(i));
      await ipc('link', 'set', nodeSide(i), 'netns', namespace(i));
      await ipc('link', 'set', hostSide(i), 'master', bridge);
      await ipc('link', 'set', hostSide(i), 'up');
      await ipc('-n', namespace(i), 'addr', 'add', `${address(i)}/24`, 'dev', nodeSide(i));
      await ipc('-n', namespace(i), 'link', 'set', nodeSide(i), 'up');
      await ipc('-n', namespace(i), 'link', 'set', 'lo', 'up');
    }
  } catch (err) {
    close();
    return { unavailable: `could not make network namespaces: ${((err as { stderr?: string }).stderr || (err as Error).message).trim()}` };
  }
  return {
    subnet: `${base}.0/24`,
    address,
    namespace,
    wrap: (i, command, args) => ({ command: ip, args: ['netns', 'exec', namespace(i), command, ...args] }),
    cut: async (i) => void (await ipc('link', 'set', hostSide(i), 'down')),
    heal: async (i) => void (await ipc('link', 'set', hostSide(i), 'up')),
    close,
  };
}
