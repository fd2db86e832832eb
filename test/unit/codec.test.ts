/**
 * The bounded decoder (src/codec.ts): every value the shop writes decodes as msgpackr would; every crafted input of
 * issue 19's table, and msgpack-shaped garbage with extreme headers, is refused before msgpackr allocates, or decodes
 * to a value with no more elements than the input has bytes.
 */
import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import t, { type Test } from 'tap';
import { decode, DecodeError, DECODE_DEPTH_MAX, encode, scan } from '../../src/codec.js';
import { STREAM_MESSAGE_BYTES_MAX } from '../../src/protocol.js';
import { be, crafted, garbage } from '../helpers/msgpack-garbage.js';

const plain = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Refused as a DecodeError (not any other error, and not decoded). */
function refused(t: Test, bytes: Uint8Array, why: RegExp, what: string, maxBytes?: number): void {
  let err: unknown;
  try {
    decode(bytes, maxBytes);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof DecodeError, `${what}: refused as a DecodeError (got ${String(err)})`);
  t.match((err as Error | undefined)?.message ?? '', why, `${what}: says why`);
}

/** Values of the kinds the shop writes: objects with string keys, arrays, strings, safe integers, floats, bytes. */
const shopValue = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.maxSafeInteger(),
    fc.double({ noNaN: true }),
    fc.string({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }),
    fc.array(tie('value'), { maxLength: 20 }),
    fc.dictionary(fc.string({ maxLength: 20 }), tie('value'), { maxKeys: 20 }),
  ),
})).value;

t.test('every value the shop writes decodes as msgpackr decodes it', async (t) => {
  fc.assert(
    fc.property(shopValue, (v) => {
      const bytes = encode(v);
      t.same(decode(bytes), plain.unpack(bytes));
      return true;
    }),
    { numRuns: 500 },
  );
  // The one extension the shop writes: undefined (a field left unset).
  t.same(decode(encode({ c: { k: 'add' }, r: undefined })), { c: { k: 'add' }, r: undefined });
  t.equal(decode(hex('cf 00 1f ff ff ff ff ff ff')), Number.MAX_SAFE_INTEGER, 'a 64-bit integer up to 2^53 - 1');
  t.equal(decode(hex('d3 ff e0 00 00 00 00 00 01')), -Number.MAX_SAFE_INTEGER, 'and down to -(2^53 - 1)');
  let deep: unknown = 1;
  for (let i = 0; i < DECODE_DEPTH_MAX; i++) deep = [deep];
  t.same(decode(encode(deep)), deep, `nesting of ${DECODE_DEPTH_MAX} is taken`);
});

t.test("the table of issue 19: each crafted message is refused before it is decoded", async (t) => {
  refused(t, Buffer.alloc(2000, 0xdc), /an array at byte 3 needs 56540 bytes, 1997 are left/, '2,000 bytes of 0xdc (nested array16 headers)');
  refused(t, Buffer.concat(Array.from({ length: 8 }, () => hex('dd 02 00 00 00'))), /needs 33554432 bytes/, '(dd 02 00 00 00) x 8 (nested array32 headers)');
  refused(t, Buffer.concat(Array.from({ length: 6 }, () => hex('dd 00 00 00 01'))), /needs 1 bytes, 0 are left/, 'array32 headers asking for the byte after the end');
  // msgpackr's reference extensions, as its own structured clone writes them: a value holding itself many times.
  const cloner = new Packr({ structuredClone: true, useRecords: false });
  let shared: unknown = { k: 'add', id: 'x', amount: 1 };
  for (let i = 0; i < 12; i++) shared = [shared, shared, shared, shared];
  refused(t, cloner.pack({ c: shared }), /not one the shop writes/, 'reference extensions (0x69/0x70)');
  const cyclic: Record<string, unknown> = { k: 'add', id: 'x' };
  cyclic.amount = cyclic;
  refused(t, cloner.pack({ c: cyclic }), /not one the shop writes/, 'a cyclic value');
  const big = new Packr({ useRecords: false, useBigIntExtension: true } as ConstructorParameters<typeof Packr>[0]);
  refused(t, big.pack({ c: { k: 2n ** 70n, id: 'x', amount: 1 } }), /not one the shop writes/, 'a BigInt (extension) in k');
  refused(t, hex(`82 a1 63 83 a1 6b a3 61 64 64 a2 69 64 a1 78 a6 61 6d 6f 75 6e 74 cf 00 20 00 00 00 00 00 00 a1 72 a1 78`), /beyond 2\^53/, 'an int64 of 2^53 in amount');
  refused(t, hex('81 a1 72 d3 80 00 00 00 00 00 00 00'), /beyond 2\^53/, 'an int64 of -2^63 in r');
  refused(t, Buffer.alloc(STREAM_MESSAGE_BYTES_MAX + 1, 0xc0), /over the 262144 bytes/, 'a command message over its cap', STREAM_MESSAGE_BYTES_MAX);
});

t.test('every crafted case of the fuzz test is refused', async (t) => {
  for (const [what, bytes] of crafted()) refused(t, bytes, /./, what);
});

t.test('what else the shop never writes is refused', async (t) => {
  let deep: unknown = 1;
  for (let i = 0; i <= DECODE_DEPTH_MAX; i++) deep = [deep];
  refused(t, encode(deep), /nested deeper than 32/, `nesting of ${DECODE_DEPTH_MAX + 1}`);
  refused(t, Buffer.concat([encode({ a: 1 }), hex('00')]), /1 bytes after the value/, 'a byte after the value');
  refused(t, Buffer.alloc(0), /needs 1 bytes/, 'nothing');
  refused(t, hex('81 91 01 01'), /map key of type 0x91/, 'a map key that is an array');
  refused(t, hex('c1'), /type 0xc1/, 'the never-used byte 0xc1');
  refused(t, hex('d4 01 00'), /extension type 1/, 'a fixext other than undefined');
  refused(t, hex('c7 00 42'), /type 0xc7/, 'ext 8 (a BigInt of no bytes)');
  refused(t, hex('db ff ff ff ff 61'), /a string at byte 5 needs 4294967295 bytes/, 'a str32 longer than what is left');
  refused(t, hex('c6 00 01 00 00'), /needs 65536 bytes/, 'a bin32 longer than what is left');
  refused(t, hex('df 80 00 00 00 01 01'), /a map at byte 5 needs 4294967296 bytes/, 'a map32 of 2^31 pairs');
});

/** Arrays, objects and strings in a decoded value, each counted as one. */
function elements(v: unknown): number {
  if (Array.isArray(v)) return 1 + v.reduce((n: number, x) => n + elements(x), 0);
  if (typeof v === 'object' && v !== null && !(v instanceof Uint8Array)) return 1 + Object.values(v).reduce((n: number, x) => n + elements(x), 0);
  return 1;
}

t.test('msgpack-shaped garbage: refused as a DecodeError, or decoded to no more elements than it has bytes', async (t) => {
  let decoded = 0;
  let refusals = 0;
  fc.assert(
    fc.property(garbage, (bytes) => {
      let value: unknown;
      try {
        value = decode(bytes);
      } catch (err) {
        if (!(err instanceof DecodeError)) throw err;
        refusals++;
        return true;
      }
      decoded++;
      // msgpackr agrees: what the scan passes it decodes whole, without error.
      const plainValue: unknown = plain.unpack(bytes);
      return elements(value) <= bytes.length && elements(plainValue) === elements(value);
    }),
    { numRuns: 3000 },
  );
  t.ok(decoded > 0 && refusals > 0, `both outcomes were tried (${decoded} decoded, ${refusals} refused)`);
});

t.test('the scan is linear: a maximal legal nesting of long arrays is walked once', async (t) => {
  // 1 MiB of fixints inside arrays nested 32 deep: taken, and every element is counted once.
  const inner = new Uint8Array(1024 * 1024).fill(0x01);
  let bytes = Buffer.concat([hex('dd'), Buffer.from(be(inner.length, 4)), inner]);
  for (let i = 1; i < DECODE_DEPTH_MAX; i++) bytes = Buffer.concat([hex('91'), bytes]);
  t.doesNotThrow(() => scan(bytes));
  t.equal(elements(decode(bytes)), DECODE_DEPTH_MAX + inner.length);
});
