/**
 * The TLS settings (natsTlsCa/Cert/Key, redisTlsCa/Cert/Key, tls:// and rediss:// URLs) against a nats-server and
 * a redis-server that require TLS with client certificates, from a CA made with openssl for this test.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { loadConfig, type Config } from '../../src/config.js';
import { connectNats, connectRedis } from '../../src/transport/connect.js';
import { abortOnExit, findBinary, reapDirOnExit, spawnChild, stopChild } from '../../src/stack/processes.js';
import { freePort, natsAnswers, tcpAccepts, waitFor } from '../../src/stack/probes.js';

const run = promisify(execFile);

/** A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, as PEM files in `dir`. */
async function certificates(dir: string) {
  const openssl = (...args: string[]) => run(findBinary('openssl'), args, { cwd: dir });
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...key, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=shop-test-ca');
  await writeFile(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const who of ['server', 'client']) {
    await openssl('req', ...key, '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=shop-test-${who}`);
    await openssl('x509', '-req', '-in', `${who}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${who}.pem`, '-days', '1', ...(who === 'server' ? ['-extfile', 'server.ext'] : []));
  }
  return { ca: join(dir, 'ca.pem'), serverCert: join(dir, 'server.pem'), serverKey: join(dir, 'server.key'), clientCert: join(dir, 'client.pem'), clientKey: join(dir, 'client.key') };
}

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shop-tls-'));
  reapDirOnExit(dir);
  t.teardown(async () => {
    await rm(dir, { recursive: true, force: true });
    reapDirOnExit(dir, false);
  });
  return dir;
}

/** Runs a server until `t` ends; resolves once `ready` is true. */
async function server(t: Test, binary: string, args: string[], ready: () => Promise<boolean>) {
  const child = spawnChild(binary, findBinary(binary), { args });
  t.teardown(() => stopChild(child, 5000, binary === 'nats-server' ? 'SIGINT' : 'SIGTERM'));
  await waitFor(ready, { deadlineMs: 10_000, what: `${binary} with TLS to answer`, signal: abortOnExit(child, binary).signal });
}

const settings = (overrides: Partial<Record<keyof Config, unknown>>) => loadConfig({}, overrides);

t.test('NATS over TLS: a tls:// URL list with the CA and a client certificate connects; without the certificate the server refuses', async (t) => {
  const dir = await tempDir(t);
  const pem = await certificates(dir);
  const port = await freePort();
  const conf = join(dir, 'nats.conf');
  await writeFile(conf, `tls {\n  cert_file: ${JSON.stringify(pem.serverCert)}\n  key_file: ${JSON.stringify(pem.serverKey)}\n  ca_file: ${JSON.stringify(pem.ca)}\n  verify: true\n}\n`);
  await server(t, 'nats-server', ['-c', conf, '-a', '127.0.0.1', '-p', String(port)], () => natsAnswers(port, { jetstream: false }));

  // A list with a server that is down: the processes' settings (reconnect forever) move on to the next one.
  const unreachable = await freePort();
  const url = `tls://127.0.0.1:${unreachable},tls://127.0.0.1:${port}`;
  const nc = await connectNats(settings({ natsUrl: url, natsTlsCa: pem.ca, natsTlsCert: pem.clientCert, natsTlsKey: pem.clientKey }), 'tls-test');
  t.teardown(() => nc.close());
  const sub = nc.subscribe('tls.echo', { callback: (_err, msg) => msg.respond(msg.data) });
  t.same([...(await nc.request('tls.echo', new Uint8Array([7]), { timeout: 5000 })).data], [7], 'request and reply over TLS, found in a list of servers');
  t.equal(nc.getServer(), `127.0.0.1:${port}`);
  sub.unsubscribe();

  await t.rejects(
    connectNats(settings({ natsUrl: `tls://127.0.0.1:${port}`, natsTlsCa: pem.ca }), 'no-cert', { maxReconnectAttempts: 2, timeoutMs: 2000 }),
    'without a client certificate the server refuses',
  );
  await t.rejects(connectNats(settings({ natsUrl: `tls://127.0.0.1:${port}` }), 'no-ca', { maxReconnectAttempts: 2, timeoutMs: 2000 }), /certificate/i, 'without the CA the client does not trust the server');
});

t.test('Redis over TLS: rediss:// with the CA and a client certificate connects; without the certificate it does not', async (t) => {
  const dir = await tempDir(t);
  const pem = await certificates(dir);
  const port = await freePort();
  await server(
    t,
    'redis-server',
    ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--tls-cert-file', pem.serverCert, '--tls-key-file', pem.serverKey, '--tls-ca-cert-file', pem.ca, '--tls-auth-clients', 'yes', '--save', '', '--appendonly', 'no', '--dir', dir],
    () => tcpAccepts(port),
  );
  const redis = await connectRedis(settings({ redisUrl: `rediss://127.0.0.1:${port}`, redisTlsCa: pem.ca, redisTlsCert: pem.clientCert, redisTlsKey: pem.clientKey }));
  t.teardown(() => redis.disconnect());
  t.equal(await redis.ping(), 'PONG', 'PING over TLS');

  const refused = await connectRedis(settings({ redisUrl: `rediss://127.0.0.1:${port}`, redisTlsCa: pem.ca }), { retryStrategy: () => null, maxRetriesPerRequest: 0 }).then(
    (r) => (r.disconnect(), false),
    () => true,
  );
  t.ok(refused, 'without a client certificate the server refuses');
  t.throws(() => settings({ redisTlsCert: pem.clientCert }), /redisTlsCert and redisTlsKey .* go together/, 'a certificate without its key is a config error');
});
