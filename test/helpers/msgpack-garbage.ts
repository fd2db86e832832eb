/**
 * Garbage shaped like msgpack, for the decoder's property test and the fuzz test: the format's own headers with
 * extreme lengths, extension types, 64-bit integers, random bytes, runs of container headers; and issue 19's
 * crafted messages.
 */
import fc from 'fast-check';
import { Packr } from 'msgpackr';

export const be = (n: number, bytes: number) => Array.from({ length: bytes }, (_, i) => (n >>> (8 * (bytes - 1 - i))) & 0xff);

/** A msgpack header with an extreme or random length, or a scalar: what garbage made of the format's own parts looks like. */
const extreme = fc.oneof(fc.constant(0), fc.constant(1), fc.constant(0xffff), fc.constant(0xffff_ffff), fc.constant(0x0200_0000), fc.nat(64), fc.nat());
const token = fc.oneof(
  fc.tuple(fc.constantFrom(0xdc, 0xde, 0xda, 0xc5), extreme).map(([t, n]) => [t, ...be(n, 2)]),
  fc.tuple(fc.constantFrom(0xdd, 0xdf, 0xdb, 0xc6), extreme).map(([t, n]) => [t, ...be(n, 4)]),
  fc.tuple(fc.constantFrom(0xd9, 0xc4, 0xc7), extreme).map(([t, n]) => [t, n & 0xff]),
  fc.tuple(fc.constantFrom(0xc8, 0xc9), extreme, fc.integer({ min: -128, max: 127 })).map(([t, n, e]) => [t, ...be(n, t === 0xc8 ? 2 : 4), e & 0xff]),
  fc.tuple(fc.constantFrom(0xd4, 0xd5, 0xd6, 0xd7, 0xd8), fc.constantFrom(0, 0x42, 0x69, 0x70, 0x72, 0x73, 0x74, 0x78, 0xff)).map(([t, e]) => [t, e]),
  fc.tuple(fc.constantFrom(0xcf, 0xd3), fc.uint8Array({ minLength: 8, maxLength: 8 })).map(([t, b]) => [t, ...b]),
  fc.integer({ min: 0x80, max: 0x9f }).map((t) => [t]), // fixmap, fixarray
  fc.integer({ min: 0xa0, max: 0xbf }).map((t) => [t]), // fixstr
  fc.integer({ min: 0, max: 255 }).map((t) => [t]),
);
export const garbage = fc.oneof(
  fc.array(token, { maxLength: 200 }).map((ts) => Uint8Array.from(ts.flat())),
  fc.uint8Array({ maxLength: 4096 }),
  fc.tuple(fc.constantFrom(0xdc, 0xdd, 0xde, 0xdf, 0x9f, 0x8f), fc.integer({ min: 1, max: 2000 })).map(([b, n]) => new Uint8Array(n).fill(b)),
);


/** A value holding itself many times over (msgpackr's structured clone writes it with reference extensions). */
function shared(): unknown {
  let v: unknown = { k: 'add', id: 'x', amount: 1 };
  for (let i = 0; i < 12; i++) v = [v, v, v, v];
  return v;
}

/** Issue 19's table: each message that used to hold a worker's event loop for seconds or throw out of its batch. */
export function crafted(): [string, Uint8Array][] {
  const cyclic: Record<string, unknown> = { k: 'add', id: 'x' };
  cyclic.amount = cyclic;
  const big = new Packr({ useRecords: false, useBigIntExtension: true } as ConstructorParameters<typeof Packr>[0]);
  const cloner = new Packr({ structuredClone: true, useRecords: false });
  return [
    ['2,000 bytes of 0xdc (nested array16 headers)', new Uint8Array(2000).fill(0xdc)],
    ['(dd 02 00 00 00) x 8 (nested array32 headers)', Uint8Array.from(Array.from({ length: 8 }, () => [0xdd, 0x02, 0, 0, 0]).flat())],
    ['reference extensions (0x69/0x70)', cloner.pack({ c: shared() })],
    ['a cyclic value', cloner.pack({ c: cyclic })],
    ['a BigInt in k', big.pack({ c: { k: 2n ** 70n, id: 'x', amount: 1 } })],
    ['a BigInt in r', big.pack({ c: { k: 'add', id: 'x', amount: 1 }, r: 2n ** 70n })],
    ['a BigInt in amount', big.pack({ c: { k: 'add', id: 'x', amount: 2n ** 70n } })],
    ['a BigInt in p (the partition a carried command is for)', big.pack({ c: { k: 'add', id: 'x', amount: 1 }, p: 2n ** 70n })],
    ['an int64 of 2^53 in amount', Uint8Array.from([0x81, 0xa1, 0x63, 0x83, 0xa1, 0x6b, 0xa3, 0x61, 0x64, 0x64, 0xa2, 0x69, 0x64, 0xa1, 0x78, 0xa6, 0x61, 0x6d, 0x6f, 0x75, 0x6e, 0x74, 0xcf, 0, 0x20, 0, 0, 0, 0, 0, 0])],
  ];
}
