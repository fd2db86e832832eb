/**
 * Progress on stderr: a cli-progress bar when stderr is a terminal, else a plain status line every
 * NON_TTY_LINE_INTERVAL_MS (so a log of a long run still shows it moving), or nothing with --no-progress.
 */
import cliProgress from 'cli-progress';

export interface ProgressFigures {
  /** req/s over the last second. */
  rps: number;
  p99Ms: number;
  errors: number;
}

export interface Progress {
  /** `unit`: what value and total count ("requests", "s", "reads"). `withFigures`: show req/s, p99 and errors. */
  start(label: string, total: number, unit: string, withFigures?: boolean): void;
  update(value: number, figures?: ProgressFigures): void;
  stop(): void;
}

const NON_TTY_LINE_INTERVAL_MS = 10_000;
/** Redraws per second: the bar shares the CPU with the system under test. */
const BAR_FPS = 4;

export function createProgress(mode: 'bar' | 'lines' | 'off', stream: NodeJS.WriteStream = process.stderr): Progress {
  if (mode === 'off') return { start() {}, update() {}, stop() {} };
  let figures: ProgressFigures = { rps: 0, p99Ms: 0, errors: 0 };
  if (mode === 'bar') {
    let bar: cliProgress.SingleBar | undefined;
    return {
      start(label, total, unit, withFigures = true) {
        const figureFormat = withFigures ? ' | {rps} req/s | p99 {p99} ms | errors {errors}' : '';
        bar = new cliProgress.SingleBar(
          {
            stream,
            fps: BAR_FPS,
            format: `${label} {bar} {percentage}% {value}/{total} ${unit}${figureFormat} | {duration_formatted}`,
            hideCursor: true,
            barsize: 30,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { rps: 0, p99: 0, errors: 0 });
      },
      update(value, f) {
        if (f) figures = f;
        bar?.update(value, { rps: Math.round(figures.rps), p99: figures.p99Ms, errors: figures.errors });
      },
      stop() {
        bar?.stop();
        bar = undefined;
      },
    };
  }
  let label = '';
  let total = 0;
  let unit = '';
  let lastLineAt = 0;
  let value = 0;
  let showFigures = true;
  const line = () =>
    stream.write(`${label}: ${Math.round(value)}/${total} ${unit}${showFigures ? ` | ${Math.round(figures.rps)} req/s | p99 ${figures.p99Ms} ms | errors ${figures.errors}` : ''}\n`);
  return {
    start(l, t, u, withFigures = true) {
      [label, total, unit, value, lastLineAt, showFigures] = [l, t, u, 0, Date.now(), withFigures];
    },
    update(v, f) {
      value = v;
      if (f) figures = f;
      if (Date.now() - lastLineAt >= NON_TTY_LINE_INTERVAL_MS) {
        lastLineAt = Date.now();
        line();
      }
    },
    stop() {
      label = '';
    },
  };
}
