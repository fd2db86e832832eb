/**
 * Reading a JSON value another process wrote (the KV buckets' values, the workers' pulses): bounded, parsed, checked
 * against its schema. Anybody with access to NATS can put anything there, and a value of the wrong shape must be
 * ignored where it is read, not crash whoever reads it.
 */
import type { Static, TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { preview, type Fault } from './faults.js';

const text = new TextDecoder();

/** Reads a value: the value if it has its schema's shape, else undefined (reported to `fault` when given). */
export type JsonDecoder<T> = (bytes: Uint8Array, fault?: Fault, key?: string) => T | undefined;

/** Most bytes of a value the shop reads (every one it writes is a small JSON object): checked before parsing. */
export const JSON_VALUE_BYTES_MAX = 64 * 1024;

export function jsonDecoder<S extends TSchema>(schema: S, what: string): JsonDecoder<Static<S>> {
  const check = TypeCompiler.Compile(schema);
  const kind = `an invalid ${what} in a KV bucket (treated as absent)`;
  return (bytes, fault, key) => {
    if (bytes.length > JSON_VALUE_BYTES_MAX) {
      fault?.(kind, { key, why: `${bytes.length} bytes, over KV_VALUE_BYTES_MAX (${JSON_VALUE_BYTES_MAX})`, ...preview(bytes) });
      return undefined;
    }
    let value: unknown;
    try {
      value = JSON.parse(text.decode(bytes));
    } catch {
      fault?.(kind, { key, why: 'not JSON', ...preview(bytes) });
      return undefined;
    }
    if (check.Check(value)) return value;
    const first = check.Errors(value).First();
    fault?.(kind, { key, why: first ? `${first.path || '/'}: ${first.message}` : 'wrong shape', ...preview(bytes) });
    return undefined;
  };
}
