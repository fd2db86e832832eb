/**
 * News of a stream's new leader, from JetStream's own advisory (`$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>`,
 * published by the new leader the moment it takes over). A partition's ordered consumer lived on the old leader
 * and a publish waiting for the old leader's acknowledgement waits in vain: both go again at once (command-reader.ts,
 * shop-client.ts) instead of after their own timeouts (missed heartbeats, 1.5 s; the acknowledgement's wait, 2 s).
 *
 * Only a hint, never needed for correctness: a lost advisory leaves those timeouts to do the same, a few seconds
 * later, and a spurious one costs a new consumer or a publish that JetStream de-duplicates.
 */
import type { NatsConnection, Subscription } from 'nats';

export const leaderElectedSubject = (stream: string) => `$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.${stream}`;

export interface StreamLeaders {
  /** Calls `fn` every time `stream` elects a leader; returns the function that stops it. */
  onElected(stream: string, fn: () => void): () => void;
  close(): void;
}

/** Listens to the leader advisories of `streams` on `nc`. */
export function watchStreamLeaders(nc: NatsConnection, streams: readonly string[]): StreamLeaders {
  const listeners = new Map<string, Set<() => void>>(streams.map((s) => [s, new Set()]));
  const subs: Subscription[] = streams.map((stream) =>
    nc.subscribe(leaderElectedSubject(stream), {
      // The advisory's body says which server leads; the subject alone is the news.
      callback: () => {
        for (const fn of [...listeners.get(stream)!]) fn();
      },
    }),
  );
  return {
    onElected(stream, fn) {
      const set = listeners.get(stream);
      if (!set) return () => {};
      set.add(fn);
      return () => void set.delete(fn);
    },
    close() {
      for (const s of subs) s.unsubscribe();
      for (const set of listeners.values()) set.clear();
    },
  };
}

/** Resolves when `stream` elects a leader, or never; `stop` forgets the wait. */
export function nextLeader(leaders: StreamLeaders | undefined, stream: string): { elected: Promise<'elected'>; stop: () => void } {
  let stop = () => {};
  const elected = new Promise<'elected'>((resolve) => {
    if (leaders) stop = leaders.onElected(stream, () => resolve('elected'));
  });
  return { elected, stop };
}
