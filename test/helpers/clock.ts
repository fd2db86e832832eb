import type { Clock, Timer } from '../../src/clock.js';

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  everyMs?: number;
}

/** A Clock whose time moves only when the test says so; timers fire, in order, as advance() passes them. */
export class FakeClock implements Clock {
  private t: number;
  private seq = 0;
  private readonly pending = new Map<Timer, Pending>();

  constructor(start = 1_700_000_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  /** Delays of the timers now pending, from now, soonest first. */
  delays(): number[] {
    return [...this.pending.values()].map((p) => p.at - this.t).sort((a, b) => a - b);
  }

  /** Moves time on by `ms`, firing every timer due on the way at its own time. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [Timer, Pending] | undefined;
      for (const entry of this.pending) if (entry[1].at <= end && (!next || entry[1].at < next[1].at || (entry[1].at === next[1].at && entry[1].seq < next[1].seq))) next = entry;
      if (!next) break;
      const [timer, p] = next;
      this.t = Math.max(this.t, p.at);
      if (p.everyMs === undefined) this.pending.delete(timer);
      else p.at += p.everyMs;
      p.fn();
    }
    this.t = end;
  }

  private add(fn: () => void, ms: number, everyMs?: number): Timer {
    const timer: Timer = { unref: () => {} };
    this.pending.set(timer, { at: this.t + Math.max(0, ms), seq: this.seq++, fn, everyMs: everyMs === undefined ? undefined : Math.max(1, everyMs) });
    return timer;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.add(fn, ms);
  }

  clearTimeout(timer: Timer | undefined): void {
    if (timer) this.pending.delete(timer);
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.add(fn, ms, ms);
  }

  clearInterval(timer: Timer | undefined): void {
    if (timer) this.pending.delete(timer);
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimeout(resolve, ms));
  }
}
