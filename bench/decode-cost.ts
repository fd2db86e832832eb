/**
 * The bounded decoder's cost on valid traffic (issue 19): milliseconds per MB of msgpack for msgpackr alone, for the
 * shop's decode (scan + msgpackr), and for the scan alone, on the messages a worker reads most (client command
 * bundles, saga parcels, outbox entries). One process, no servers.
 *
 *   npm run build && node dist/bench/decode-cost.js
 */
import { Unpackr } from 'msgpackr';
import { decode, encode, scan } from '../src/codec.js';

const plain = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });
const uuid = (i: number) => `${(i * 2654435761) >>> 0}`.padStart(8, '0') + '-1b2c-4d5e-8f90-a1b2c3d4e5f6';
const reply = (i: number) => `_reply.gateway.g1.${i.toString(36)}`;

/** Valid messages of the kinds a worker decodes, about `bytes` of them in all. */
function traffic(bytes: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let total = 0;
  for (let i = 0; total < bytes; i++) {
    let m: Uint8Array;
    switch (i % 4) {
      case 0: // a bundle of 32 client commands
        m = encode(Array.from({ length: 32 }, (_, j) => ({ c: { k: 'add', id: uuid(i + j), amount: j + 1 }, r: reply(i + j) })));
        break;
      case 1: // one checkout
        m = encode({ c: { k: 'checkout', id: uuid(i) }, r: reply(i) });
        break;
      case 2: // a saga parcel: reserves of 3 lines
        m = encode(Array.from({ length: 8 }, (_, j) => ({ k: 'reserve', saga: `${uuid(i + j)}#1`, order: uuid(i + j), from: j, lines: [[uuid(j), 1], [uuid(j + 1), 2], [uuid(j + 2), 3]] })));
        break;
      default: // an outbox entry: 16 replies and a parcel
        m = encode({ replies: Array.from({ length: 16 }, (_, j) => [reply(i + j), encode({ ok: true, v: { stock: j, price: 10 } })]), parcels: [['stock', 1, `order.0.${i}.0.0`, encode([{ k: 'forget', sagas: [[`${uuid(i)}#1`, -3]] }])]], dead: [] });
    }
    out.push(m);
    total += m.length;
  }
  return out;
}

function msPerMb(messages: Uint8Array[], fn: (m: Uint8Array) => unknown): number {
  const bytes = messages.reduce((n, m) => n + m.length, 0);
  for (let warm = 0; warm < 3; warm++) for (const m of messages) fn(m);
  const runs: number[] = [];
  for (let r = 0; r < 7; r++) {
    const t0 = performance.now();
    for (const m of messages) fn(m);
    runs.push(performance.now() - t0);
  }
  runs.sort((a, b) => a - b);
  return runs[3]! / (bytes / 1e6); // median
}

const messages = traffic(16e6);
const bytes = messages.reduce((n, m) => n + m.length, 0);
const unpack = msPerMb(messages, (m) => plain.unpack(m));
const shop = msPerMb(messages, (m) => decode(m));
const scanOnly = msPerMb(messages, (m) => scan(m));
process.stdout.write(
  `${messages.length} messages, ${(bytes / 1e6).toFixed(1)} MB of valid traffic (median of 7 runs)\n` +
    `msgpackr unpack alone:     ${unpack.toFixed(2)} ms/MB\n` +
    `shop decode (scan+unpack): ${shop.toFixed(2)} ms/MB (+${(((shop - unpack) / unpack) * 100).toFixed(0)}%)\n` +
    `scan alone:                ${scanOnly.toFixed(2)} ms/MB\n`,
);
