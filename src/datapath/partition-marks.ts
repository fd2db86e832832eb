import type { JetStreamManager, NatsConnection } from 'nats';
import { checkStream, newestMark, publishMark } from './marks.js';
import { StaleEpochError, type PartitionStore } from './store.js';

export interface PartitionMarksDeps {
  nc: NatsConnection;
  jsm: JetStreamManager;
  store: PartitionStore;
  /** The partition's command stream, and its marks' subject in it. */
  stream: string;
  subject: string;
  /** The epoch its runner holds the partition at. */
  epoch: () => number;
}

/** One partition's marks in its command stream (marks.ts): checked when it is taken, published before each trim. */
export class PartitionMarks {
  constructor(private readonly deps: PartitionMarksDeps) {}

  /**
   * Does the stream still hold every command after the cursor Redis gave back, and is it the stream this partition
   * read before? Undefined when it does and is; else why not, with what was seen. A partition that never marked this
   * stream marks it now, so that a stream made anew is known for one.
   */
  async check(cursor: number, recordedMark: number): Promise<{ error: string; details: Record<string, unknown> } | undefined> {
    const { jsm, stream, subject } = this.deps;
    const [info, mark] = await Promise.all([jsm.streams.info(stream), newestMark(jsm, stream, subject)]);
    const verdict = checkStream({ stream, lastSeq: info.state.last_seq, mark, cursor, recordedMark });
    if (!verdict.ok) return { error: verdict.error, details: { why: verdict.why, lastSeq: info.state.last_seq, cursor, mark, recordedMark } };
    if (!mark || recordedMark === 0) await this.mark(cursor);
    return undefined;
  }

  /**
   * Publishes a mark at `upTo` and records it, as the owner at its epoch (store.ts: a deposed owner's mark is not
   * recorded, and this throws StaleEpochError).
   */
  async mark(upTo: number): Promise<void> {
    const { store, epoch } = this.deps;
    const seq = await publishMark(this.deps.nc, this.deps.subject, upTo);
    if (!(await store.recordMark(epoch(), seq))) throw new StaleEpochError(epoch(), await store.epoch());
  }
}
