import { mapLimit } from '../../bench/http.js';

/** Runs fn over items with at most `width` calls in flight; results in the items' order (the bench's mapLimit). */
export function pool<T, R>(items: T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  return mapLimit(items.length, width, (i) => fn(items[i]!));
}
