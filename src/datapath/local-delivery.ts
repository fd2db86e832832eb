/**
 * The in-memory delivery: applies a command to a partition's draft with the actor's pure logic, and routes what
 * the command causes. A command for a partition that `route` finds here is applied at once, in the same pass, and
 * so is whatever that causes in turn, until the sagas rest; a command for anywhere else goes to `sink.send`, and so
 * does one the actor may defer (a forget) for a partition not yet in the pass: the worker sends it later, with others.
 *
 * The batch loop (datapath/batch-loop.ts: saga messages between the partitions of one worker), the warm-up
 * (datapath/warm-up.ts) and the saga property test all deliver through this one piece, so what the test proves about
 * the protocol is what the worker runs.
 */
import type { Actor, Outgoing, ReplyTo } from '../actors/types.js';
import type { Kind } from '../config.js';
import type { Reply } from '../protocol.js';
import type { Draft } from './draft.js';

/** One partition as the delivery sees it. */
export interface Box {
  readonly kind: Kind;
  readonly partition: number;
  readonly actor: Actor<unknown, unknown>;
  /** Where the commands' writes go; a command that throws is taken back whole. */
  readonly draft: Draft;
  /** The number of the next command delivered within the process: -1, -2, ... (see ApplyContext.seq). */
  nextLocal(): number;
}

/** Where the effects of delivered commands go. */
export interface Sink<B extends Box> {
  /** An answer to a waiting client: this command's, or (`decided`) a kept waiter's once its saga has decided. */
  reply(box: B, to: ReplyTo, reply: Reply): void;
  /** A saga has decided: its outcome, once per saga whatever the number of waiters. */
  decided?(box: B, outcome: Reply): void;
  /** A command for a partition that is not delivered here. */
  send(box: B, out: Outgoing): void;
  /** A command that threw (it broke an actor's invariant): nothing of it was kept. */
  failed(box: B, cmd: unknown, seq: number, replyTo: ReplyTo | undefined, err: unknown): void;
}

export class Delivery<B extends Box> {
  /** Commands waiting to be delivered here within the current pass, in the order they were made. */
  private readonly queue: [B, unknown][] = [];

  constructor(
    private readonly partitions: number,
    /**
     * The box of a partition delivered here, or undefined: the command leaves through `sink.send`. `joined`: only a
     * box that is in the pass already (for a command the actor may defer, which is not worth a box of its own).
     */
    private readonly route: (kind: Kind, partition: number, joined: boolean) => B | undefined,
    private readonly sink: Sink<B>,
  ) {}

  /** Applies `cmd` to `box` as command number `seq`, then everything it causes here, until nothing is left. */
  deliver(box: B, cmd: unknown, seq: number, replyTo?: ReplyTo): void {
    try {
      this.applyOne(box, cmd, seq, replyTo);
      for (let i = 0; i < this.queue.length; i++) {
        const [to, next] = this.queue[i]!;
        this.applyOne(to, next, to.nextLocal(), undefined);
      }
    } finally {
      // A throw out of a sink leaves nothing queued for the next command's pass.
      this.queue.length = 0;
    }
  }

  private applyOne(box: B, cmd: unknown, seq: number, replyTo: ReplyTo | undefined): void {
    let effects;
    try {
      effects = box.actor.apply(box.draft, cmd as never, replyTo === undefined ? { partition: box.partition, partitions: this.partitions, seq } : { partition: box.partition, partitions: this.partitions, seq, replyTo });
      box.draft.keepCommand();
    } catch (err) {
      box.draft.dropCommand();
      this.sink.failed(box, cmd, seq, replyTo, err);
      return;
    }
    if (replyTo !== undefined && effects.reply) this.sink.reply(box, replyTo, effects.reply);
    if (effects.replies && effects.replies.length > 0) {
      for (const { to, reply } of effects.replies) this.sink.reply(box, to, reply);
      this.sink.decided?.(box, effects.replies[0]!.reply); // deferred answers are the outcome of a saga
    }
    if (!effects.send) return;
    for (const out of effects.send) {
      const to = this.route(out.kind, out.partition, box.actor.deferrable?.(out.cmd) === true);
      if (to) this.queue.push([to, out.cmd]);
      else this.sink.send(box, out);
    }
  }
}
