/**
 * What nats-server spends per command with one consumer per partition, against one consumer for them all: the cost
 * under the shop's 64 partitions per kind (issue 20). A nats-server of its own (free port, temporary dir, the test
 * helpers); a fresh stream per run, like a kind's (`bench<n>.cmd.*`); 256 publishers in a closed loop storing
 * `--messages` messages of 60 bytes spread over `--partitions` subjects, as gateways do, while ordered pull consumers
 * read them with the shop's settings (command-reader.ts): one per subject, or one on the wildcard. Reported: the
 * server's CPU (from /proc) in µs per message stored and delivered, each layout in turn, `--rounds` times.
 *
 *   npm run build && node dist/bench/consumers.js [--partitions 2,64] [--messages 60000] [--rounds 2]
 */
import { connect, type NatsConnection } from 'nats';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { clockTicksPerS, parseStat } from './proc.js';
import { startNats } from '../test/helpers/servers.js';

const PUBLISHERS = 256;
const PAYLOAD_BYTES = 60;
/** The command reader's pull (CONSUMER_PULL_EXPIRES_MS, CONSUMER_HEARTBEAT_MS; max_messages at queueMax 512). */
const PULL = { max_messages: 512, expires: 5000, idle_heartbeat: 500 };

const { values } = parseArgs({ options: { partitions: { type: 'string', default: '2,64' }, messages: { type: 'string', default: '60000' }, rounds: { type: 'string', default: '2' } } });
const counts = values.partitions.split(',').map(Number);
const messages = Number(values.messages);
const rounds = Number(values.rounds);
if (!counts.every((n) => Number.isInteger(n) && n > 0) || !(messages > 0) || !(rounds > 0)) throw new Error('--partitions: counts > 0, comma-separated; --messages and --rounds > 0');

const ticksPerMs = clockTicksPerS() / 1000;
const cpuMs = (pid: number) => parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'))!.ownTicks / ticksPerMs;

let runs = 0;
/** One run: a fresh stream, the consumers, the messages; the server's CPU µs per message, and the run's seconds. */
async function run(nc: NatsConnection, pid: number, partitions: number, wildcard: boolean): Promise<{ usPerMessage: number; seconds: number }> {
  const jsm = await nc.jetstreamManager();
  const stream = `BENCH${++runs}`;
  const prefix = `bench${runs}.cmd`;
  await jsm.streams.add({ name: stream, subjects: [`${prefix}.*`] });
  const js = nc.jetstream();
  let delivered = 0;
  let done = () => {};
  const all = new Promise<void>((resolve) => (done = resolve));
  const filters = wildcard ? [`${prefix}.*`] : Array.from({ length: partitions }, (_, p) => `${prefix}.${p}`);
  // A copy each time: nats.js writes into the options it is given, and a second consume with them delivered nothing.
  const readers = await Promise.all(filters.map(async (f) => (await js.consumers.get(stream, { filterSubjects: f })).consume({ ...PULL })));
  for (const r of readers) void (async () => { for await (const _ of r) if (++delivered === messages) done(); })();
  const payload = new Uint8Array(PAYLOAD_BYTES);
  const before = cpuMs(pid);
  const began = performance.now();
  let sent = 0;
  await Promise.all(Array.from({ length: PUBLISHERS }, async () => { while (sent < messages) await js.publish(`${prefix}.${sent++ % partitions}`, payload); }));
  await all;
  const used = cpuMs(pid) - before;
  const seconds = (performance.now() - began) / 1000;
  for (const r of readers) r.stop();
  await jsm.streams.purge(stream);
  return { usPerMessage: (used * 1000) / messages, seconds };
}

const teardowns: (() => Promise<void> | void)[] = [];
const t = { teardown: (fn: () => Promise<void> | void) => teardowns.push(fn) } as unknown as Parameters<typeof startNats>[0];
try {
  const server = await startNats(t);
  const nc = await connect({ servers: server.url });
  teardowns.push(() => nc.close());
  console.log(`nats-server CPU per message stored and delivered (${messages} messages, ${PUBLISHERS} publishers in a closed loop, ${rounds} rounds)`);
  console.log('partitions  consumers              µs/message (rounds)   seconds');
  for (let round = 0; round < rounds; round++) {
    for (const partitions of counts) {
      for (const wildcard of partitions > 1 ? [false, true] : [false]) {
        const r = await run(nc, server.pid!, partitions, wildcard);
        console.log(`${String(partitions).padStart(10)}  ${(wildcard ? 'one on the wildcard' : `one per partition`).padEnd(21)}  ${r.usPerMessage.toFixed(1).padStart(10)} (round ${round + 1})  ${r.seconds.toFixed(1).padStart(7)}`);
      }
    }
  }
} finally {
  for (const fn of teardowns.reverse()) await fn();
}
