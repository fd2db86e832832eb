import { Packr } from 'msgpackr';

/**
 * msgpack for everything on the wire and in Redis. Records are off so that every process
 * (and every restart) decodes every value alone, without shared structure state.
 */
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export function encode(value: unknown): Buffer {
  return packr.pack(value);
}

export function decode<T = unknown>(bytes: Uint8Array): T {
  return packr.unpack(bytes) as T;
}
