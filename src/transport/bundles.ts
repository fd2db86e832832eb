/**
 * A gateway's commands to one partition within one event-loop turn leave as one stream message (a bundle): one
 * publish, one acknowledgement and one delivery instead of one each. Each command keeps its own reply subject.
 */
import { BUNDLE_MAX, bundleRanges, type CommandEnvelope } from '../protocol.js';
import type { Mux } from './mux.js';
import type { Store } from './publish.js';

interface Bundle {
  subject: string;
  /** The stream that stores it (its kind's). */
  stream: string;
  envelopes: CommandEnvelope[];
  /** The waiting commands' reply tokens, failed together if the stream refuses the bundle to the end. */
  tokens: string[];
  /** The first command's deadline: the earliest of the bundle. */
  deadline: number;
}

/** One command: where it goes, and the waiter (`token`) its outcome settles. */
export interface BundledCommand {
  subject: string;
  stream: string;
  envelope: CommandEnvelope;
  token: string;
  deadline: number;
}

export interface Bundles {
  /**
   * Adds a command to its partition's bundle of this turn, sent with the mux's flush (or at once when full).
   * `alone`: sent at once as a stream message of its own.
   */
  add(command: BundledCommand, alone: boolean): void;
  /** Sends every open bundle: called with the mux's flush, in the same socket write as everything else. */
  flush(): void;
}

/** `id` (the client's) makes each message's Nats-Msg-Id unique to this process. */
export function createBundles({ id, mux, store }: { id: string; mux: Mux; store: Store }): Bundles {
  const open = new Map<string, Bundle>();

  function send(bundle: Bundle): void {
    try {
      // Usually one message; more only when the bundle is over BUNDLE_BYTES_MAX.
      for (const { from, to, data } of bundleRanges(bundle.envelopes)) {
        store(bundle.subject, bundle.stream, data, `${id}.${mux.token()}`, bundle.deadline).catch((err: Error) => {
          for (const token of bundle.tokens.slice(from, to)) mux.cancel(token, err);
        });
      }
    } catch (err) {
      // A command that cannot be encoded is a bug in a route: its requests fail (500), the process goes on.
      for (const token of bundle.tokens) mux.cancel(token, err as Error);
    }
  }

  return {
    add({ subject, stream, envelope, token, deadline }, alone) {
      if (alone) return send({ subject, stream, envelopes: [envelope], tokens: [token], deadline });
      let bundle = open.get(subject);
      if (!bundle) {
        open.set(subject, (bundle = { subject, stream, envelopes: [], tokens: [], deadline }));
        mux.requestFlush();
      }
      bundle.envelopes.push(envelope);
      bundle.tokens.push(token);
      if (bundle.envelopes.length >= BUNDLE_MAX) {
        open.delete(subject);
        send(bundle);
      }
    },
    flush() {
      for (const bundle of open.values()) send(bundle);
      open.clear();
    },
  };
}
