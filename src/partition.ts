/** FNV-1a 32-bit over the UTF-16 code units of the id: stable across processes, versions and restarts. */
export function fnv1a(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export function partitionOf(id: string, partitions: number): number {
  return fnv1a(id) % partitions;
}

/** Ids "0".."n-1" that hash to this partition: batch_init goes to every partition and each creates its share. */
export function* ownShare(n: number, ctx: { partition: number; partitions: number }): Generator<string> {
  for (let i = 0; i < n; i++) {
    const id = String(i);
    if (partitionOf(id, ctx.partitions) === ctx.partition) yield id;
  }
}
