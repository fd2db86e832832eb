import { Packr, Unpackr } from 'msgpackr';

/**
 * msgpack for everything on the wire and in Redis. Records are off so that every process (and every restart)
 * decodes every value alone, without shared structure state.
 *
 * Every decode goes through `decode`, which checks the bytes before msgpackr allocates anything (`scan`): msgpackr
 * trusts its input's length headers (an array16 header of 2,000 bytes of 0xdc allocated 296 MB and held the event
 * loop 1.8 s), and its extensions (references, records, BigInt, Set, RegExp, ...) build values that cost far more
 * than their bytes and that JSON, the schemas or a later encode cannot handle. After the scan, decoding costs time
 * linear in the input and memory a small multiple of it: every element is at least one byte of the input.
 */
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });
/** The decoder proper: no records, no structured clone (references 0x69/0x70): the scan refuses them first anyway. */
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number', structuredClone: false });

/** Deepest nesting of arrays and maps a decoded value may have (the shop's deepest value, an outbox entry, has 5). */
export const DECODE_DEPTH_MAX = 32;
/**
 * Longest input `decode` takes unless its caller names another cap: the largest max_payload a NATS server can be
 * configured with (64 MiB), and more than any value the shop stores in Redis. Callers that know their subject cap it
 * lower before decoding (stream commands, reads, resend requests, acknowledgements).
 */
export const DECODE_BYTES_MAX = 64 * 1024 * 1024;

/** A value that is not one the shop would have written: refused before it was decoded. */
export class DecodeError extends Error {
  override readonly name = 'DecodeError';
}

export function encode(value: unknown): Buffer {
  return packr.pack(value);
}

/**
 * Decodes msgpack from outside the process (or Redis), refusing with a DecodeError what the shop never writes:
 * more than `maxBytes`, a length past the bytes left, nesting deeper than DECODE_DEPTH_MAX, any extension but
 * `undefined`, integers outside ±(2^53 - 1), map keys that are not strings or integers, and bytes after the value.
 */
export function decode<T = unknown>(bytes: Uint8Array, maxBytes = DECODE_BYTES_MAX): T {
  if (bytes.length > maxBytes) throw new DecodeError(`${bytes.length} bytes is over the ${maxBytes} bytes this subject takes`);
  scan(bytes);
  return unpackr.unpack(bytes) as T;
}

/** Big-endian unsigned integer of `n` (1, 2 or 4) bytes at `at`. */
function uint(b: Uint8Array, at: number, n: number): number {
  if (n === 1) return b[at]!;
  if (n === 2) return (b[at]! << 8) | b[at + 1]!;
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

/** Largest high 32-bit word of a 64-bit integer whose value is a safe JavaScript integer (|v| < 2^53). */
const SAFE_HIGH_MAX = 0x1f_ffff;
/** High word of -2^53 in two's complement: a negative 64-bit integer above it is safe. */
const NEGATIVE_HIGH_MIN = 0xffe0_0000;

/**
 * Walks the msgpack structure of `b` without building it, in one pass with an explicit stack (no recursion):
 * throws a DecodeError for anything `decode` refuses. Time linear in `b.length`, memory linear in the depth.
 */
export function scan(b: Uint8Array, depthMax = DECODE_DEPTH_MAX): void {
  const len = b.length;
  let pos = 0;
  /** Items still to read in the containers open around the current one; and whether each is a map. */
  const outer: number[] = [];
  const outerMap: boolean[] = [];
  let left = 1;
  let inMap = false;
  const need = (n: number, what: string) => {
    if (n > len - pos) throw new DecodeError(`${what} at byte ${pos} needs ${n} bytes, ${len - pos} are left`);
  };
  const open = (items: number, map: boolean) => {
    // Every item takes at least one byte: a header asking for more items than bytes left is a lie.
    need(items, map ? 'a map' : 'an array');
    if (items === 0) return;
    if (outer.length >= depthMax) throw new DecodeError(`nested deeper than ${depthMax} at byte ${pos}`);
    outer.push(left);
    outerMap.push(inMap);
    left = items;
    inMap = map;
  };
  for (;;) {
    while (left === 0) {
      if (outer.length === 0) {
        if (pos !== len) throw new DecodeError(`${len - pos} bytes after the value (at byte ${pos})`);
        return;
      }
      left = outer.pop()!;
      inMap = outerMap.pop()!;
    }
    const isKey = inMap && left % 2 === 0;
    left--;
    need(1, 'a value');
    const t = b[pos]!;
    pos++;
    if (isKey && !(t <= 0x7f || (t >= 0xa0 && t <= 0xbf) || t >= 0xe0 || (t >= 0xcc && t <= 0xce) || (t >= 0xd0 && t <= 0xd2) || (t >= 0xd9 && t <= 0xdb))) {
      throw new DecodeError(`map key of type 0x${t.toString(16)} at byte ${pos - 1}: keys are strings or integers`);
    }
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) continue; // fixint, nil, booleans
    if (t >= 0xa0 && t <= 0xbf) {
      need(t & 0x1f, 'a string');
      pos += t & 0x1f;
    } else if (t >= 0x90 && t <= 0x9f) open(t & 0x0f, false);
    else if (t >= 0x80 && t <= 0x8f) open(2 * (t & 0x0f), true);
    else {
      switch (t) {
        case 0xcc: case 0xd0: need(1, 'an integer'); pos += 1; break;
        case 0xcd: case 0xd1: need(2, 'an integer'); pos += 2; break;
        case 0xce: case 0xd2: case 0xca: need(4, 'a number'); pos += 4; break;
        case 0xcb: need(8, 'a float'); pos += 8; break;
        case 0xcf: case 0xd3: {
          need(8, 'an integer');
          const high = uint(b, pos, 4);
          // Negative: two's complement, safe down to -(2^53 - 1) = 0xffe00000_00000001.
          const safe = high <= SAFE_HIGH_MAX || (t === 0xd3 && (high > NEGATIVE_HIGH_MIN || (high === NEGATIVE_HIGH_MIN && uint(b, pos + 4, 4) !== 0)));
          if (!safe) throw new DecodeError(`a 64-bit integer beyond 2^53 at byte ${pos - 1}`);
          pos += 8;
          break;
        }
        case 0xd9: case 0xc4: { need(1, 'a length'); const n = b[pos]!; pos += 1; need(n, 'a string'); pos += n; break; }
        case 0xda: case 0xc5: { need(2, 'a length'); const n = uint(b, pos, 2); pos += 2; need(n, 'a string'); pos += n; break; }
        case 0xdb: case 0xc6: { need(4, 'a length'); const n = uint(b, pos, 4); pos += 4; need(n, 'a string'); pos += n; break; }
        case 0xdc: { need(2, 'a length'); const n = uint(b, pos, 2); pos += 2; open(n, false); break; }
        case 0xdd: { need(4, 'a length'); const n = uint(b, pos, 4); pos += 4; open(n, false); break; }
        case 0xde: { need(2, 'a length'); const n = uint(b, pos, 2); pos += 2; open(2 * n, true); break; }
        case 0xdf: { need(4, 'a length'); const n = uint(b, pos, 4); pos += 4; open(2 * n, true); break; }
        case 0xd4:
          // The one extension the shop writes: msgpackr's `undefined` (fixext 1, type 0, data 0).
          need(2, 'an extension');
          if (b[pos] !== 0 || b[pos + 1] !== 0) throw new DecodeError(`extension type ${b[pos]} at byte ${pos - 1}: the shop writes none but undefined`);
          pos += 2;
          break;
        default:
          // 0xc1 (never used), ext 8/16/32 and fixext 2..16: references, records, BigInt, Set, RegExp, dates, ...
          throw new DecodeError(`type 0x${t.toString(16)} at byte ${pos - 1}: not one the shop writes`);
      }
    }
  }
}
