#!/usr/bin/env node
/**
 * `node dist/bench/log-cost.js`: what the logger costs per call on the hot path. A debug call below the level (as
 * in a partition's state changes at the default level info) must cost what a loop without it costs; a line that is
 * written (to a sink that discards it: the cost of pino, not of the terminal) is shown for comparison. Each figure is
 * the median of ROUNDS rounds, in nanoseconds per call; a busy machine spreads them, so compare within one run.
 */
import { createLog } from '../src/log.js';

const CALLS = 20_000_000;
const WRITTEN_CALLS = 200_000;
const ROUNDS = 5;

const log = createLog('worker-0', 'info', () => {}).child({ name: 'stock-3', kind: 'stock', partition: 3 });
let sum = 0;
const samples = new Map<string, number[]>();
function time(label: string, n: number, run: (n: number) => void): void {
  const t0 = process.hrtime.bigint();
  run(n);
  const ns = Number(process.hrtime.bigint() - t0) / n;
  samples.set(label, [...(samples.get(label) ?? []), ns]);
}

// Each loop is written out rather than passed a callback: one shared call site would turn megamorphic and cost
// more than what it measures.
for (let round = 0; round < ROUNDS; round++) {
  time('no log call', CALLS, (n) => {
    for (let i = 0; i < n; i++) sum += i;
  });
  time('debug below the level, with data', CALLS, (n) => {
    for (let i = 0; i < n; i++) {
      log.debug('owned', { epoch: i, cursor: i });
      sum += i;
    }
  });
  time('debug below the level, no data', CALLS, (n) => {
    for (let i = 0; i < n; i++) {
      log.debug('owned');
      sum += i;
    }
  });
  time('info written (JSON, discarded)', WRITTEN_CALLS, (n) => {
    for (let i = 0; i < n; i++) {
      log.info('owned', { epoch: i, cursor: i });
      sum += i;
    }
  });
}
for (const [label, ns] of samples) {
  ns.sort((a, b) => a - b);
  process.stdout.write(`${label.padEnd(34)} ${ns[ns.length >> 1]!.toFixed(1).padStart(8)} ns/call  (fastest round ${ns[0]!.toFixed(1)})\n`);
}
// Keeps the loops' work observable, so that none is optimized away.
if (sum === -1) process.stdout.write('\n');
