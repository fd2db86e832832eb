/**
 * The load loop. Two models:
 *  - closed: `concurrency` workers, each sending its next request when the previous one is answered, either
 *    back to back (latency from the actual send) or paced (a virtual user sending once every `paceMs`;
 *    latency from the time it meant to send, so a slow system does not hide its own slowness);
 *  - open: requests due at a fixed `rate`, latency from each one's intended send time (no coordinated
 *    omission); when `maxOutstanding` are in flight, a due request is dropped and counted instead.
 * Requests go through undici's dispatcher with one reusable handler object per request slot, so a request
 * allocates little more than its path: no promise, no body stream, no parsed header object. A closed-loop
 * worker sends on a connection of its own when `connections` are given (worker w on connection w mod n).
 */
import type { Dispatcher } from 'undici';
import type { Op, Scenario } from './scenarios.js';
import { ERROR, EXPECTED, NO_RESPONSE, OK, type Stats, type TimelinePoint } from './stats.js';

export type LoadModel =
  | { kind: 'closed'; concurrency: number; paceMs: number }
  | { kind: 'open'; rate: number; maxOutstanding: number };

export type StopReason = 'exhausted' | 'duration' | 'requests' | 'interrupted';

export interface LoadOptions {
  dispatcher: Dispatcher;
  /** Closed loop: the connections under `dispatcher`, one per worker (shared round the list past its length). */
  connections?: readonly Dispatcher[] | undefined;
  scenario: Scenario;
  stats: Stats;
  model: LoadModel;
  /** Measured time, after the warm-up. */
  durationMs?: number | undefined;
  /**
   * Load that is sent but not measured first: requests sent before it ends still reach the scenario (the audit
   * follows them), but not the statistics, and the timeline and the duration start after it.
   */
  warmupMs?: number | undefined;
  requests?: number | undefined;
  /** Per request: for the response headers, and between body chunks. */
  timeoutMs: number;
  /** Called as each one-second window of the timeline closes. */
  onSecond?: (point: TimelinePoint) => void;
}

export interface LoadResult {
  /** Wall-clock start of the measurement (after the warm-up), ms since the epoch. */
  startedAt: number;
  /** From the end of the warm-up until the last request in flight ended. */
  elapsedMs: number;
  issued: number;
  stoppedBy: StopReason;
}

export interface LoadRun {
  /** Stop issuing requests; the ones in flight are still awaited and counted. */
  stop(reason?: StopReason): void;
  readonly issued: number;
  readonly inFlight: number;
  readonly done: Promise<LoadResult>;
}

/** The timeline's window length. */
const WINDOW_MS = 1000;
/** A closed-loop worker whose request got no response waits this long, so a dead target is not a busy loop. */
const NO_RESPONSE_PAUSE_MS = 10;

/** One request slot: the undici handler (its legacy callback interface, which undici 7 runs on natively). */
class Exchange implements Dispatcher.DispatchHandler {
  op: Op | undefined = undefined;
  /** performance.now() of the send, or of the intended send (open loop, paced workers). */
  startMs = 0;
  /** Paced workers: when this one meant to send. */
  scheduledMs = 0;
  status = 0;
  keepBody = false;
  chunks: Buffer[] = [];
  timer: NodeJS.Timeout | undefined = undefined;
  readonly opts: Dispatcher.DispatchOptions;

  constructor(
    private readonly load: Load,
    readonly dispatcher: Dispatcher,
    timeoutMs: number,
  ) {
    this.opts = { path: '/', method: 'GET', headersTimeout: timeoutMs, bodyTimeout: timeoutMs };
  }
  onConnect(): void {}
  onHeaders(statusCode: number): boolean {
    this.status = statusCode;
    return true;
  }
  onData(chunk: Buffer): boolean {
    if (this.keepBody || this.status >= 300) this.chunks.push(chunk);
    return true;
  }
  onComplete(): void {
    this.load.complete(this, undefined);
  }
  onError(err: Error): void {
    this.load.complete(this, err);
  }
}

function parseBody(chunks: Buffer[]): unknown {
  const text = chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

class Load implements LoadRun {
  issued = 0;
  inFlight = 0;
  readonly done: Promise<LoadResult>;
  private stopping = false;
  private finished = false;
  private stoppedBy: StopReason = 'exhausted';
  private readonly free: Exchange[] = [];
  private readonly exchanges: Exchange[] = [];
  private readonly t0 = performance.now();
  /** The end of the warm-up: what completes from requests sent before it is not recorded. */
  private readonly measureFrom: number;
  private startedAt = Date.now();
  private windowStart: number;
  private windowTimer: NodeJS.Timeout | undefined;
  private warmupTimer: NodeJS.Timeout | undefined;
  private durationTimer: NodeJS.Timeout | undefined;
  private pumpTimer: NodeJS.Timeout | undefined;
  /** Open loop: requests due so far (sent or dropped). */
  private due = 0;
  private resolve!: (r: LoadResult) => void;

  constructor(private readonly o: LoadOptions) {
    this.done = new Promise((resolve) => (this.resolve = resolve));
    const warmupMs = o.warmupMs ?? 0;
    this.measureFrom = this.windowStart = this.t0 + warmupMs;
    const measure = () => {
      this.startedAt = Date.now();
      this.windowStart = performance.now();
      this.windowTimer = setInterval(() => this.closeWindow(), WINDOW_MS);
    };
    if (warmupMs > 0) this.warmupTimer = setTimeout(measure, warmupMs);
    else measure();
    if (o.durationMs !== undefined) this.stopAt(this.t0 + warmupMs + o.durationMs);
    const m = o.model;
    if (m.kind === 'closed') {
      for (let w = 0; w < m.concurrency && !this.stopping; w++) {
        const ex = this.newExchange();
        if (m.paceMs > 0) {
          // Spread the virtual users' first requests over one pace, as if they had arrived at random.
          ex.scheduledMs = this.t0 + (w * m.paceMs) / m.concurrency;
          ex.timer = setTimeout(this.fire, ex.scheduledMs - this.t0, ex);
        } else {
          const op = this.nextOp();
          if (op) this.send(ex, op, performance.now());
        }
      }
    } else {
      this.pump();
    }
    this.finishIfIdle();
  }

  /**
   * Stops the run at `endAt` (performance.now()), never before: Node runs timers by the event loop's cached
   * millisecond clock, so one can fire up to about a millisecond early; it is then armed again for what is left.
   */
  private stopAt(endAt: number): void {
    this.durationTimer = setTimeout(() => (performance.now() >= endAt ? this.stop('duration') : this.stopAt(endAt)), Math.max(0, Math.ceil(endAt - performance.now())));
  }

  private newExchange(): Exchange {
    const own = this.o.model.kind === 'closed' && this.o.connections?.length ? this.o.connections[this.exchanges.length % this.o.connections.length]! : undefined;
    const ex = new Exchange(this, own ?? this.o.dispatcher, this.o.timeoutMs);
    this.exchanges.push(ex);
    return ex;
  }

  stop(reason: StopReason = 'interrupted'): void {
    if (this.stopping) return;
    this.stopping = true;
    this.stoppedBy = reason;
    clearTimeout(this.durationTimer);
    clearTimeout(this.pumpTimer);
    clearTimeout(this.warmupTimer);
    for (const ex of this.exchanges) {
      clearTimeout(ex.timer);
      ex.timer = undefined;
    }
    this.finishIfIdle();
  }

  private nextOp(): Op | undefined {
    if (this.stopping) return undefined;
    if (this.o.requests !== undefined && this.issued >= this.o.requests) {
      this.stop('requests');
      return undefined;
    }
    const op = this.o.scenario.next();
    if (!op) {
      this.stop('exhausted');
      return undefined;
    }
    this.issued++;
    return op;
  }

  private send(ex: Exchange, op: Op, startMs: number): void {
    ex.op = op;
    ex.status = 0;
    ex.chunks.length = 0;
    ex.keepBody = this.o.scenario.wantsBody(op);
    ex.startMs = startMs;
    ex.opts.path = op.path;
    ex.opts.method = op.method;
    this.inFlight++;
    ex.dispatcher.dispatch(ex.opts, ex);
  }

  /** An unpaced worker's timer after a request without response: send the next one now. */
  private readonly resume = (ex: Exchange): void => {
    ex.timer = undefined;
    const op = this.nextOp();
    if (op) this.send(ex, op, performance.now());
    else this.finishIfIdle();
  };

  /** A paced worker's timer: send the next request, with latency counted from when it was due. */
  private readonly fire = (ex: Exchange): void => {
    ex.timer = undefined;
    const op = this.nextOp();
    if (op) this.send(ex, op, ex.scheduledMs);
    else this.finishIfIdle();
  };

  complete(ex: Exchange, err: Error | undefined): void {
    const now = performance.now();
    this.inFlight--;
    const op = ex.op!;
    const s = this.o.scenario;
    let status = NO_RESPONSE;
    let code: string | undefined;
    let body: unknown;
    if (err) {
      code = (err as NodeJS.ErrnoException).code ?? err.name;
    } else {
      status = ex.status;
      if (ex.chunks.length > 0) body = parseBody(ex.chunks);
      if (status >= 300) {
        const e = (body as { error?: unknown } | undefined)?.error;
        code = typeof e === 'string' ? e : `http_${status}`;
      }
    }
    if (ex.startMs >= this.measureFrom) {
      const outcome = status >= 200 && status < 300 ? OK : status !== NO_RESPONSE && s.isExpected(op, status, code) ? EXPECTED : ERROR;
      this.o.stats.record(op.kind, status, code, Math.round((now - ex.startMs) * 1000), outcome);
    }
    s.onResult(op, status, ex.keepBody && status >= 200 && status < 300 ? body : undefined);
    ex.op = undefined;
    ex.chunks.length = 0;
    this.after(ex, now, status === NO_RESPONSE);
  }

  private after(ex: Exchange, now: number, failed: boolean): void {
    const m = this.o.model;
    if (m.kind === 'open' || this.stopping) {
      this.free.push(ex);
      this.finishIfIdle();
      return;
    }
    if (m.paceMs === 0 && failed) {
      ex.timer = setTimeout(this.resume, NO_RESPONSE_PAUSE_MS, ex);
      return;
    }
    if (m.paceMs === 0) {
      const op = this.nextOp();
      if (op) this.send(ex, op, now);
      else this.finishIfIdle();
      return;
    }
    ex.scheduledMs += m.paceMs;
    if (ex.scheduledMs <= now) this.fire(ex);
    else ex.timer = setTimeout(this.fire, ex.scheduledMs - now, ex);
  }

  /** Open loop: send what is due by now, then sleep until the next one is. */
  private readonly pump = (): void => {
    this.pumpTimer = undefined;
    const m = this.o.model;
    if (m.kind !== 'open' || this.stopping) return;
    const intervalMs = 1000 / m.rate;
    const now = performance.now();
    const dueByNow = Math.floor((now - this.t0) / intervalMs) + 1;
    while (this.due < dueByNow && !this.stopping) {
      const intendedMs = this.t0 + this.due * intervalMs;
      this.due++;
      if (this.inFlight >= m.maxOutstanding) {
        if (intendedMs >= this.measureFrom) this.o.stats.drop();
        continue;
      }
      const op = this.nextOp();
      if (!op) break;
      this.send(this.free.pop() ?? this.newExchange(), op, intendedMs);
    }
    if (!this.stopping) {
      const nextMs = this.t0 + this.due * intervalMs;
      this.pumpTimer = setTimeout(this.pump, Math.max(0, nextMs - performance.now()));
    }
  };

  private closeWindow(): void {
    const now = performance.now();
    const point = this.o.stats.closeWindow((now - this.measureFrom) / 1000, (now - this.windowStart) / 1000);
    this.windowStart = now;
    this.o.onSecond?.(point);
  }

  private finishIfIdle(): void {
    if (!this.stopping || this.inFlight > 0 || this.finished) return;
    this.finished = true;
    // Paced workers between requests hold timers, cleared by stop(); nothing else is outstanding.
    clearInterval(this.windowTimer);
    clearTimeout(this.warmupTimer);
    const now = performance.now();
    // The last, partial window (skipped when the previous one closed a moment ago, or the warm-up never ended).
    if (now - this.windowStart >= 50 && now > this.measureFrom) this.closeWindow();
    this.resolve({ startedAt: this.startedAt, elapsedMs: Math.max(0, now - this.measureFrom), issued: this.issued, stoppedBy: this.stoppedBy });
  }
}

/** Starts the load at once; `done` resolves when it has stopped and every request in flight has ended. */
export function startLoad(o: LoadOptions): LoadRun {
  return new Load(o);
}
