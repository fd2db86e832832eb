import type { StateView } from '../../src/actors/types.js';

/** A plain in-memory state for running pure actors in unit tests. */
export function memoryState(tables: readonly string[]): StateView & { tables: Map<string, Map<string, unknown>> } {
  const data = new Map(tables.map((t) => [t, new Map<string, unknown>()]));
  const table = (name: string) => {
    const t = data.get(name);
    if (!t) throw new Error(`unknown table ${name}`);
    return t;
  };
  return {
    tables: data,
    get: <T>(name: string, key: string) => table(name).get(key) as T | undefined,
    set: (name, key, value) => void table(name).set(key, structuredClone(value)),
    delete: (name, key) => void table(name).delete(key),
    entries: <T>(name: string) => table(name).entries() as Iterable<[string, T]>,
  };
}
