/**
 * deploy/monitoring/ as the tests read it (the alert rules, the dashboard's queries), and Prometheus's HTTP query API.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

/** The repository root, from test/helpers/ and dist/test/helpers/. */
export const ROOT = ((): string => {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    try {
      readFileSync(join(dir, 'package.json'));
      return dir;
    } catch {
      if (dirname(dir) === dir) throw new Error('package.json not found above test/helpers');
    }
  }
})();
export const MONITORING_DIR = join(ROOT, 'deploy/monitoring');

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** Every alerting rule of deploy/monitoring/alerts.yml. */
export function alertRules(): AlertRule[] {
  const doc = parse(readFileSync(join(MONITORING_DIR, 'alerts.yml'), 'utf8')) as { groups: { rules: (AlertRule | { record: string })[] }[] };
  return doc.groups.flatMap((g) => g.rules.filter((r): r is AlertRule => 'alert' in r));
}

/** A query of a dashboard panel. */
export interface PanelQuery {
  panel: string;
  legend: string;
  expr: string;
}

/** Every query of deploy/monitoring/shop-dashboard.json, rows' panels included. */
export function dashboardQueries(): PanelQuery[] {
  type Panel = { title?: string; panels?: Panel[]; targets?: { expr?: string; legendFormat?: string }[] };
  const dashboard = JSON.parse(readFileSync(join(MONITORING_DIR, 'shop-dashboard.json'), 'utf8')) as { panels: Panel[] };
  return dashboard.panels
    .flatMap((p) => [p, ...(p.panels ?? [])])
    .flatMap((p) => (p.targets ?? []).map((q) => ({ panel: p.title ?? '?', legend: q.legendFormat ?? '', expr: q.expr ?? '' })));
}

/** Grafana's variables as Grafana would fill them for a dashboard over Prometheus scraping every `scrapeS` seconds. */
export function substituteVariables(expr: string, scrapeS: number): string {
  // $__rate_interval is at least four scrape intervals; $__interval the step of a graph; $__range the time range.
  const vars: Record<string, string> = { __rate_interval: `${Math.max(4 * scrapeS, 15)}s`, __interval: `${scrapeS}s`, __range: '5m' };
  const out = expr.replace(/\$(?:\{(\w+)\}|(\w+))/g, (whole, a: string | undefined, b: string | undefined) => {
    const value = vars[(a ?? b)!];
    if (value === undefined) throw new Error(`${whole} in ${JSON.stringify(expr)} is no variable this test knows; add it to substituteVariables`);
    return value;
  });
  return out;
}

export interface QueryResult {
  /** The series of an instant vector (a scalar counts as one). */
  series: { metric: Record<string, string>; value: [number, string] }[];
}

/** An instant query through /api/v1/query; throws with Prometheus's error for a query it refuses. */
export async function instantQuery(url: string, expr: string): Promise<QueryResult> {
  const response = await fetch(`${url}/api/v1/query`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ query: expr }) });
  const body = (await response.json()) as { status: string; error?: string; errorType?: string; data?: { resultType: string; result: unknown } };
  if (body.status !== 'success' || !body.data) throw new Error(`Prometheus refused ${JSON.stringify(expr)}: ${body.errorType}: ${body.error}`);
  if (body.data.resultType === 'vector') return { series: body.data.result as QueryResult['series'] };
  if (body.data.resultType === 'scalar') return { series: [{ metric: {}, value: body.data.result as [number, string] }] };
  throw new Error(`${JSON.stringify(expr)} returned a ${body.data.resultType}, not an instant vector`);
}
