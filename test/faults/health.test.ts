/**
 * Honest probes: /readyz of real gateway and worker processes says "not ok" while nats-server (or Redis) is paused
 * with SIGSTOP, and "ok" again after SIGCONT; an error nobody handled ends a process with code 1, logged.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { logLines } from '../helpers/logs.js';
import { startServers, testConfig, waitFor, type TestServer } from '../helpers/servers.js';
import { spawnRole, type Child } from '../helpers/stack.js';

const readyz = async (base: string) => {
  const res = await fetch(`${base}/readyz`);
  return { status: res.status, body: await res.text() };
};

/** The admin URL a role process logs once it listens (at log level info). */
async function adminUrl(child: Child): Promise<string> {
  let url = '';
  await waitFor(
    () => {
      const line = logLines(child.output()).find((l) => l.msg === 'admin http listening');
      url = typeof line?.url === 'string' ? line.url : '';
      return url !== '';
    },
    { deadlineMs: 20_000, intervalMs: 20, what: `the admin URL in the output of pid ${child.process.pid}` },
  );
  return url;
}

function pause(t: Test, server: TestServer): { resume(): void } {
  const pid = server.pid!;
  process.kill(pid, 'SIGSTOP');
  let resumed = false;
  const resume = () => {
    if (resumed) return;
    resumed = true;
    process.kill(pid, 'SIGCONT');
  };
  t.teardown(resume); // never leave a server stopped, whatever failed
  return { resume };
}

const until = (what: string, check: () => Promise<boolean>) => waitFor(check, { deadlineMs: 15_000, intervalMs: 50, what });

t.test('/readyz of a gateway and a worker is not ok while nats-server is paused, ok again once it runs; a worker\'s also while Redis is paused', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { workerProcesses: 1, logLevel: 'info' });
  const worker = spawnRole('worker', config);
  const gateway = spawnRole('gateway', config);
  t.teardown(async () => {
    await gateway.kill('SIGKILL');
    await worker.kill('SIGKILL');
  });
  const [w, g] = await Promise.all([adminUrl(worker), adminUrl(gateway)]);
  await until('both to be ready', async () => (await readyz(w)).status === 200 && (await readyz(g)).status === 200);

  const natsPause = pause(t, nats);
  await until('the gateway to be not ready', async () => (await readyz(g)).status === 503);
  await until('the worker to be not ready', async () => (await readyz(w)).status === 503);
  t.match(await readyz(g), { status: 503, body: /^not ok: NATS (not answering|disconnected)/ }, 'the gateway says NATS is the reason');
  t.match(await readyz(w), { status: 503, body: /^not ok: NATS (not answering|disconnected)/ }, 'the worker says NATS is the reason');
  natsPause.resume();
  await until('both to be ready again', async () => (await readyz(w)).status === 200 && (await readyz(g)).status === 200);
  t.pass('ready again after SIGCONT');

  const redisPause = pause(t, redis);
  await until('the worker to be not ready', async () => (await readyz(w)).status === 503);
  t.match(await readyz(w), { status: 503, body: /^not ok: Redis /m }, 'the worker says Redis is the reason');
  t.equal((await readyz(g)).status, 200, 'the gateway does not use Redis: still ready');
  redisPause.resume();
  await until('the worker to be ready again', async () => (await readyz(w)).status === 200);
  t.pass('the worker is ready again once Redis answers');
  t.equal(worker.process.exitCode, null, 'the worker ran through it all');
  t.equal(gateway.process.exitCode, null, 'the gateway ran through it all');
});

t.test('an uncaught exception or an unhandled rejection ends a process with code 1, logged with its context', async (t) => {
  const fixture = fileURLToPath(new URL('../fixtures/fatal.js', import.meta.url));
  for (const [how, what, message] of [
    ['throw', 'uncaught exception', 'boom from a timer'],
    ['reject', 'unhandled rejection', 'boom from a promise'],
  ] as const) {
    const child = spawn(process.execPath, [fixture, how], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    t.equal(code, 1, `${how}: exit code 1`);
    const lines = logLines(err);
    t.match(lines, [{ level: 'error', name: 'fixture', msg: `${what}; exiting with code 1`, role: 'fixture', pid: child.pid, err: { type: 'Error', message, stack: new RegExp(`^Error: ${message}\\n\\s+at `) } }], `${how}: logged as one JSON line with the role, pid, message and stack`);
    t.equal(lines.length, 1, `${how}: and only that`);
  }
});
