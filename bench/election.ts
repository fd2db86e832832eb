/**
 * How long a JetStream R3 stream and KV bucket take to accept writes again when the node leading them is killed
 * (SIGKILL) or paused (SIGSTOP), on this machine: a 3-node cluster of its own (free ports, temporary dirs, the test
 * helpers), one client connected to all three with the settings every process uses (src/transport/connect.ts, the cluster
 * profile's ping interval), writing every 50 ms to each with a 1 s timeout. Per round: the write gap (last write
 * stored before the fault to the first stored after), and when the new leader was first seen. The figures size the
 * cluster profile's lease (docs/architecture.md, "NATS cluster").
 *
 *   npm run build && node dist/bench/election.js [rounds per fault (5)]
 */
import { StringCodec } from 'nats';
import { loadConfig } from '../src/config.js';
import { connectNats } from '../src/transport/connect.js';
import { startNatsCluster } from '../test/helpers/ha.js';

const rounds = Number(process.argv[2] ?? 5);
/** One write attempt every WRITE_EVERY_MS, each waiting at most WRITE_TIMEOUT_MS. */
const WRITE_EVERY_MS = 50;
const WRITE_TIMEOUT_MS = 1000;

const teardowns: (() => Promise<void> | void)[] = [];
const t = { teardown: (fn: () => Promise<void> | void) => teardowns.push(fn) } as unknown as Parameters<typeof startNatsCluster>[0];
try {
  const cluster = await startNatsCluster(t);
  const profile = loadConfig({ SHOP_PROFILE: 'cluster' });
  const nc = await connectNats({ ...profile, natsUrl: cluster.url, natsUser: '', natsPassword: '' }, 'election-bench');
  teardowns.push(() => nc.close());
  const jsm = await nc.jetstreamManager();
  await jsm.streams.add({ name: 'ELECTION', subjects: ['election.>'], num_replicas: 3 });
  const js = nc.jetstream({ timeout: WRITE_TIMEOUT_MS });
  const kv = await js.views.kv('ELECTION_KV', { replicas: 3, history: 1 });
  const targets = {
    stream: { name: 'ELECTION', write: () => js.publish('election.x', StringCodec().encode('x')) },
    bucket: { name: 'KV_ELECTION_KV', write: () => kv.put('x', StringCodec().encode('x')) },
  } as const;
  const figures: Record<string, number[]> = {};
  for (const fault of ['SIGKILL', 'SIGSTOP'] as const) {
    for (const [what, target] of Object.entries(targets)) {
      for (let r = 0; r < rounds; r++) {
        await cluster.caughtUp();
        const leader = await cluster.leaderOf(target.name);
        if (leader === undefined) throw new Error(`${target.name} has no leader`);
        const node = cluster.nodes[leader]!;
        let lastBefore = 0;
        let firstAfter = 0;
        let faultAt = 0;
        let stop = false;
        const writer = (async () => {
          while (!stop) {
            const sent = performance.now();
            try {
              await target.write();
              if (!faultAt || sent < faultAt) lastBefore = performance.now();
              else if (!firstAfter) firstAfter = performance.now();
            } catch {
              // not stored: the gap goes on
            }
            await new Promise((resolve) => setTimeout(resolve, WRITE_EVERY_MS));
          }
        })();
        await new Promise((resolve) => setTimeout(resolve, 500));
        faultAt = performance.now();
        if (fault === 'SIGKILL') node.kill9();
        else node.pause();
        let leaderSeenMs = 0;
        while (!firstAfter || !leaderSeenMs) {
          if (performance.now() - faultAt > 60_000) throw new Error(`${target.name}: no write stored within 60 s of the ${fault}`);
          const now = await cluster.leaderOf(target.name).catch(() => undefined);
          if (!leaderSeenMs && now !== undefined && now !== leader) leaderSeenMs = Math.round(performance.now() - faultAt);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        stop = true;
        await writer;
        const gapMs = Math.round(firstAfter - lastBefore);
        (figures[`${fault} ${what}`] ??= []).push(gapMs);
        console.log(`${fault} of the leader of the ${what} (n${leader}), round ${r + 1}: writes stored again after a gap of ${gapMs} ms; new leader seen after ${leaderSeenMs} ms`);
        if (fault === 'SIGKILL') await node.restart();
        else node.resume();
        await cluster.ready();
      }
    }
  }
  console.log('\nwrite gap (ms), min / median / max:');
  for (const [key, gaps] of Object.entries(figures)) {
    const sorted = [...gaps].sort((a, b) => a - b);
    console.log(`  ${key.padEnd(16)} ${sorted[0]} / ${sorted[Math.floor(sorted.length / 2)]} / ${sorted[sorted.length - 1]}   (${sorted.join(', ')})`);
  }
} finally {
  for (const fn of teardowns.reverse()) await fn();
}
