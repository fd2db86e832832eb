/**
 * A small hand-written SVG line chart: up to two y axes (left and right, each with its own scale), a time
 * x axis, grid lines, tick labels and a legend. Enough for throughput and p99 latency over a run, with no
 * charting library.
 */

export interface Series {
  name: string;
  /** Shown on the axis: "req/s", "ms". */
  unit: string;
  color: string;
  axis: 'left' | 'right';
  /** Drawn dashed, so a line lying on top of another stays visible. */
  dashed?: boolean;
  points: ReadonlyArray<readonly [number, number]>;
}

export interface ChartSpec {
  title: string;
  /** A smaller second line under the title. */
  subtitle?: string;
  xLabel: string;
  series: readonly Series[];
  width?: number;
  height?: number;
}

const MARGIN = { top: 68, right: 76, bottom: 52, left: 76 };
const TICKS = 5;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** 0 and evenly spaced round values (1, 2, 2.5 or 5 times a power of ten) up to at least `max`. */
export function niceTicks(max: number, count = TICKS): number[] {
  if (!(max > 0) || !Number.isFinite(max)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 2.5, 5, 10].find((m) => m * power >= raw) ?? 10) * power;
  const ticks: number[] = [];
  for (let i = 0; ; i++) {
    const v = Number((i * step).toPrecision(12));
    ticks.push(v);
    if (v >= max) break;
  }
  return ticks;
}

/** 1500 -> "1.5k", 0.25 -> "0.25", 12 -> "12". */
export function formatTick(v: number): string {
  if (v >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (v >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}

const f = (n: number) => (Math.round(n * 10) / 10).toString();

export function renderChart(spec: ChartSpec): string {
  const width = spec.width ?? 900;
  const height = spec.height ?? 420;
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const x0 = MARGIN.left;
  const y0 = MARGIN.top + plotH;

  const xMax = Math.max(1, ...spec.series.flatMap((s) => s.points.map(([x]) => x)));
  const xTicks = niceTicks(xMax);
  const xTop = xTicks[xTicks.length - 1]!;
  const sx = (x: number) => x0 + (x / xTop) * plotW;

  const axes = (['left', 'right'] as const).map((side) => {
    const series = spec.series.filter((s) => s.axis === side);
    const yMax = Math.max(0, ...series.flatMap((s) => s.points.map(([, y]) => y)));
    const ticks = niceTicks(yMax);
    const top = ticks[ticks.length - 1]!;
    return { side, series, ticks, sy: (y: number) => y0 - (y / top) * plotH };
  });

  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="600" ${FONT}>${escapeXml(spec.title)}</text>`);
  if (spec.subtitle) out.push(`<text x="${width / 2}" y="37" text-anchor="middle" font-size="11" fill="#555" ${FONT}>${escapeXml(spec.subtitle)}</text>`);

  // Grid and ticks of the left axis (or the right one when the left has no series), x ticks.
  const gridAxis = axes[0]!.series.length > 0 ? axes[0]! : axes[1]!;
  for (const t of gridAxis.ticks) out.push(`<line x1="${x0}" y1="${f(gridAxis.sy(t))}" x2="${x0 + plotW}" y2="${f(gridAxis.sy(t))}" stroke="#e5e5e5" stroke-width="1"/>`);
  for (const t of xTicks) {
    const x = f(sx(t));
    out.push(`<line x1="${x}" y1="${y0}" x2="${x}" y2="${y0 + 5}" stroke="#333" stroke-width="1"/>`);
    out.push(`<text x="${x}" y="${y0 + 19}" text-anchor="middle" font-size="11" ${FONT}>${formatTick(t)}</text>`);
  }
  out.push(`<text x="${x0 + plotW / 2}" y="${height - 10}" text-anchor="middle" font-size="12" ${FONT}>${escapeXml(spec.xLabel)}</text>`);

  for (const axis of axes) {
    if (axis.series.length === 0) continue;
    const left = axis.side === 'left';
    const ax = left ? x0 : x0 + plotW;
    const color = axis.series[0]!.color;
    out.push(`<line x1="${ax}" y1="${MARGIN.top}" x2="${ax}" y2="${y0}" stroke="${color}" stroke-width="1.5"/>`);
    for (const t of axis.ticks) {
      const y = f(axis.sy(t));
      out.push(`<line x1="${left ? ax - 5 : ax}" y1="${y}" x2="${left ? ax : ax + 5}" y2="${y}" stroke="${color}" stroke-width="1"/>`);
      out.push(`<text x="${left ? ax - 8 : ax + 8}" y="${y}" dy="4" text-anchor="${left ? 'end' : 'start'}" font-size="11" fill="${color}" ${FONT}>${formatTick(t)}</text>`);
    }
    const label = escapeXml([...new Set(axis.series.map((s) => s.unit))].join(', '));
    const lx = left ? 16 : width - 16;
    const ly = MARGIN.top + plotH / 2;
    out.push(`<text x="${lx}" y="${ly}" text-anchor="middle" font-size="12" fill="${color}" transform="rotate(${left ? -90 : 90} ${lx} ${ly})" ${FONT}>${label}</text>`);
  }
  out.push(`<line x1="${x0}" y1="${y0}" x2="${x0 + plotW}" y2="${y0}" stroke="#333" stroke-width="1.5"/>`);

  for (const axis of axes) {
    for (const s of axis.series) {
      if (s.points.length === 0) continue;
      const pts = s.points.map(([x, y]) => `${f(sx(x))},${f(axis.sy(y))}`).join(' ');
      const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${dash} stroke-linejoin="round" points="${pts}"><title>${escapeXml(s.name)}</title></polyline>`);
    }
  }
  if (spec.series.every((s) => s.points.length === 0)) {
    out.push(`<text x="${x0 + plotW / 2}" y="${MARGIN.top + plotH / 2}" text-anchor="middle" font-size="13" fill="#888" ${FONT}>no data</text>`);
  }

  // Legend, above the plot.
  let lx = x0;
  for (const s of spec.series) {
    const label = `${s.name} (${s.unit}, ${s.axis} axis)`;
    out.push(`<line x1="${lx}" y1="53" x2="${lx + 18}" y2="53" stroke="${s.color}" stroke-width="3"${s.dashed ? ' stroke-dasharray="5 3"' : ''}/>`);
    out.push(`<text x="${lx + 24}" y="57" font-size="12" ${FONT}>${escapeXml(label)}</text>`);
    lx += 24 + label.length * 6.5 + 20;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
