/**
 * Time as the control plane sees it: the controller, the dynamic worker and the supervisor take a Clock instead of
 * calling Date.now() and setTimeout themselves, so tests of leases, leadership and backoff move time on by hand
 * instead of waiting for it. The decisions themselves (election.ts, liveness.ts, handoff.ts, restart.ts) take the
 * time as an argument and read no clock at all.
 */

/** A pending timer; only the clock that made it can cancel it. */
export interface Timer {
  /** Lets the process exit while the timer is pending (Node's `unref`). */
  unref(): void;
}

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  clearTimeout(timer: Timer | undefined): void;
  setInterval(fn: () => void, ms: number): Timer;
  clearInterval(timer: Timer | undefined): void;
  /** Resolves after `ms`. */
  sleep(ms: number): Promise<void>;
}

/** The wall clock and Node's timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (timer) => clearInterval(timer as NodeJS.Timeout | undefined),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};
