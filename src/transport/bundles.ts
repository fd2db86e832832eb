/**
 * A gateway's commands leave as few stream messages as possible (bundles): one publish, one acknowledgement and one
 * delivery instead of one each. Within one event-loop turn, the commands of a kind go together per worker that owns
 * their partitions (as its pulses tell, owners.ts): the bundle travels on the subject of the first one's partition
 * (the carrier), each other command naming its own partition (`p`), and the owner applies each on its partition in
 * one batch. Commands whose owner is not known go together per partition, as do those sent again to their own
 * partition after an `elsewhere`. Each command keeps its own reply subject.
 */
import { BUNDLE_MAX, bundleRanges, type CommandEnvelope } from '../protocol.js';
import type { Mux } from './mux.js';
import type { Store } from './publish.js';

interface Bundle {
  /** The carrier: the subject it travels on, and that subject's partition. */
  subject: string;
  partition: number;
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
  /** Its partition's command subject, and the partition. */
  subject: string;
  partition: number;
  stream: string;
  envelope: CommandEnvelope;
  token: string;
  deadline: number;
}

export interface Bundles {
  /**
   * Adds a command to its bundle of this turn, sent with the mux's flush (or at once when full): its owner's
   * (`owner`, a worker id) or, without one, its partition's. `alone`: sent at once as a stream message of its own.
   */
  add(command: BundledCommand, alone: boolean, owner?: string): void;
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
    add({ subject, partition, stream, envelope, token, deadline }, alone, owner) {
      if (alone) return send({ subject, partition, stream, envelopes: [envelope], tokens: [token], deadline });
      // A worker id has no dot or space, a subject has a dot: the two kinds of key never meet.
      const key = owner === undefined ? subject : `${stream} ${owner}`;
      let bundle = open.get(key);
      if (!bundle) {
        open.set(key, (bundle = { subject, partition, stream, envelopes: [], tokens: [], deadline }));
        mux.requestFlush();
      }
      if (partition !== bundle.partition) envelope.p = partition;
      bundle.envelopes.push(envelope);
      bundle.tokens.push(token);
      if (bundle.envelopes.length >= BUNDLE_MAX) {
        open.delete(key);
        send(bundle);
      }
    },
    flush() {
      for (const bundle of open.values()) send(bundle);
      open.clear();
    },
  };
}
