/**
 * What a run measures: HDR latency histograms (whole run, per operation kind, and per one-second window
 * for the timeline), counts by HTTP status and by error code, and outcomes (ok, expected refusal, error).
 * Latencies are recorded in microseconds; reports show milliseconds.
 */
import * as hdr from 'hdr-histogram-js';

/** 2xx; a refusal the scenario expects (e.g. 400 insufficient_stock under contention); anything else. */
export const OK = 0;
export const EXPECTED = 1;
export const ERROR = 2;
export type Outcome = typeof OK | typeof EXPECTED | typeof ERROR;

/** Transport failures (timeouts, refused or reset connections) are counted under this status. */
export const NO_RESPONSE = 0;

/** Above this a latency is still recorded (the histogram resizes), but 10 minutes is far past any deadline. */
const HIGHEST_TRACKABLE_US = 600_000_000;

export function newHistogram(): hdr.Histogram {
  // The pure-JS build (useWebAssembly false): no WASM start-up, and fast enough at these rates.
  return hdr.build({ bitBucketSize: 32, lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_TRACKABLE_US, numberOfSignificantValueDigits: 3, autoResize: true, useWebAssembly: false });
}

export interface LatencySummary {
  count: number;
  meanMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

const ms = (us: number) => Math.round(us) / 1000;

export function summarize(h: hdr.Histogram): LatencySummary {
  if (h.totalCount === 0) return { count: 0, meanMs: 0, p50Ms: 0, p90Ms: 0, p99Ms: 0, p999Ms: 0, maxMs: 0 };
  return {
    count: h.totalCount,
    meanMs: ms(h.mean),
    p50Ms: ms(h.getValueAtPercentile(50)),
    p90Ms: ms(h.getValueAtPercentile(90)),
    p99Ms: ms(h.getValueAtPercentile(99)),
    p999Ms: ms(h.getValueAtPercentile(99.9)),
    maxMs: ms(h.maxValue),
  };
}

/** One window of the timeline (normally one second; the last one may be shorter). */
export interface TimelinePoint {
  /** Seconds since the load started, at the end of the window. */
  t: number;
  /** The window's length in seconds. */
  seconds: number;
  /** Completed requests (any outcome) per second. */
  rps: number;
  /** 2xx per second. */
  okPerS: number;
  expectedPerS: number;
  errorsPerS: number;
  /** Open loop: requests dropped for exceeding the outstanding bound, per second. */
  droppedPerS: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export interface KindStats {
  name: string;
  ok: number;
  expected: number;
  errors: number;
  latency: LatencySummary;
}

export interface StatsSummary {
  completed: number;
  ok: number;
  expected: number;
  errors: number;
  dropped: number;
  latency: LatencySummary;
  /** HTTP status -> count; "0" for requests that got no response. */
  byStatus: Record<string, number>;
  /** Error code (the body's "error", or the transport error's code) -> count. */
  byCode: Record<string, number>;
  byKind: KindStats[];
  timeline: TimelinePoint[];
}

interface Kind {
  name: string;
  hist: hdr.Histogram;
  ok: number;
  expected: number;
  errors: number;
}

export class Stats {
  private readonly all = newHistogram();
  private readonly window = newHistogram();
  private readonly kinds: Kind[];
  private readonly status = new Map<number, number>();
  private readonly codes = new Map<string, number>();
  ok = 0;
  expected = 0;
  errors = 0;
  dropped = 0;
  private w = { completed: 0, ok: 0, expected: 0, errors: 0, dropped: 0 };
  readonly timeline: TimelinePoint[] = [];

  constructor(kindNames: readonly string[]) {
    this.kinds = kindNames.map((name) => ({ name, hist: newHistogram(), ok: 0, expected: 0, errors: 0 }));
  }

  get completed(): number {
    return this.ok + this.expected + this.errors;
  }

  /** A request that got a response (`latencyUs` set) or none (status NO_RESPONSE, latency not recorded). */
  record(kind: number, status: number, code: string | undefined, latencyUs: number, outcome: Outcome): void {
    const k = this.kinds[kind];
    if (!k) throw new Error(`operation kind ${kind} is not one of the ${this.kinds.length} this run declared`);
    this.status.set(status, (this.status.get(status) ?? 0) + 1);
    if (code !== undefined) this.codes.set(code, (this.codes.get(code) ?? 0) + 1);
    if (status !== NO_RESPONSE) {
      const us = latencyUs < 1 ? 1 : latencyUs;
      this.all.recordValue(us);
      this.window.recordValue(us);
      k.hist.recordValue(us);
    }
    this.w.completed++;
    if (outcome === OK) {
      this.ok++;
      this.w.ok++;
      k.ok++;
    } else if (outcome === EXPECTED) {
      this.expected++;
      this.w.expected++;
      k.expected++;
    } else {
      this.errors++;
      this.w.errors++;
      k.errors++;
    }
  }

  drop(): void {
    this.dropped++;
    this.w.dropped++;
  }

  /** Closes the current window, `seconds` long, ending `t` seconds after the start; returns its point. */
  closeWindow(t: number, seconds: number): TimelinePoint {
    const per = seconds > 0 ? 1 / seconds : 0;
    const lat = summarize(this.window);
    const point: TimelinePoint = {
      t: round(t, 3),
      seconds: round(seconds, 3),
      rps: round(this.w.completed * per, 1),
      okPerS: round(this.w.ok * per, 1),
      expectedPerS: round(this.w.expected * per, 1),
      errorsPerS: round(this.w.errors * per, 1),
      droppedPerS: round(this.w.dropped * per, 1),
      p50Ms: lat.p50Ms,
      p99Ms: lat.p99Ms,
      maxMs: lat.maxMs,
    };
    this.timeline.push(point);
    this.window.reset();
    this.w = { completed: 0, ok: 0, expected: 0, errors: 0, dropped: 0 };
    return point;
  }

  summary(): StatsSummary {
    const sortedEntries = <K>(m: Map<K, number>) => Object.fromEntries([...m].sort((a, b) => b[1] - a[1]).map(([k, v]) => [String(k), v]));
    return {
      completed: this.completed,
      ok: this.ok,
      expected: this.expected,
      errors: this.errors,
      dropped: this.dropped,
      latency: summarize(this.all),
      byStatus: sortedEntries(this.status),
      byCode: sortedEntries(this.codes),
      byKind: this.kinds.filter((k) => k.hist.totalCount > 0 || k.ok + k.expected + k.errors > 0).map((k) => ({ name: k.name, ok: k.ok, expected: k.expected, errors: k.errors, latency: summarize(k.hist) })),
      timeline: this.timeline,
    };
  }
}

export function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** The least-squares line through (x, y) points; a single point (or one x) gives a flat line through their mean. */
export function leastSquares(points: readonly (readonly [number, number])[]): { intercept: number; slope: number } {
  const n = points.length;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  const sxx = points.reduce((s, [x]) => s + (x - mx) ** 2, 0);
  const sxy = points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0);
  const slope = sxx > 0 ? sxy / sxx : 0;
  return { intercept: my - slope * mx, slope };
}
