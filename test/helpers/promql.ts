/**
 * Reads the names out of a PromQL expression, as far as the dashboard check needs: which metrics it selects (with
 * the labels of their matchers), which labels it groups by, which functions it calls. Not a parser: it reads the
 * tokens, and throws on anything it does not know (an unknown function, a selector without a metric name), so a
 * dashboard query it cannot read fails the check instead of passing unread.
 */

export interface PromqlNames {
  /** Every selector: the metric name and the label names its matchers use. */
  selectors: { metric: string; labels: string[] }[];
  /** Label names in by / without / on / ignoring / group_left / group_right. */
  grouping: string[];
  /** Functions and aggregations called. */
  functions: string[];
}

export class PromqlError extends Error {
  override name = 'PromqlError';
}

const AGGREGATIONS = new Set(['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile']);
const FUNCTIONS = new Set([
  'abs', 'absent', 'absent_over_time', 'ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min', 'day_of_month', 'day_of_week',
  'days_in_month', 'delta', 'deriv', 'exp', 'floor', 'histogram_quantile', 'holt_winters', 'hour', 'idelta', 'increase', 'irate',
  'label_join', 'label_replace', 'ln', 'log2', 'log10', 'minute', 'month', 'predict_linear', 'rate', 'resets', 'round', 'scalar',
  'sgn', 'sort', 'sort_desc', 'sqrt', 'time', 'timestamp', 'vector', 'year', 'avg_over_time', 'min_over_time', 'max_over_time',
  'sum_over_time', 'count_over_time', 'quantile_over_time', 'stddev_over_time', 'stdvar_over_time', 'last_over_time', 'present_over_time',
]);
const GROUPING = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'atan2']);
const IDENT = /[a-zA-Z_:][a-zA-Z0-9_:]*/y;
const NUMBER = /(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*/y;
/** A Grafana variable: $__rate_interval, ${datasource}. */
const VARIABLE = /\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)/y;
const MATCHER = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*(?:,|$)/y;

export function promqlNames(expr: string): PromqlNames {
  const out: PromqlNames = { selectors: [], grouping: [], functions: [] };
  let i = 0;
  const fail = (why: string): never => {
    throw new PromqlError(`${why} at offset ${i} of ${JSON.stringify(expr)}`);
  };
  const skipSpace = () => {
    while (i < expr.length && /\s/.test(expr[i]!)) i++;
  };
  const match = (re: RegExp): string | undefined => {
    re.lastIndex = i;
    const m = re.exec(expr);
    if (!m) return undefined;
    i = re.lastIndex;
    return m[0];
  };
  /** From an opening quote, bracket or brace to its end (strings inside skipped); returns the text between. */
  const until = (close: string): string => {
    const start = ++i;
    while (i < expr.length && expr[i] !== close) {
      const c = expr[i]!;
      if (c === '"' || c === "'") {
        for (i++; i < expr.length && expr[i] !== c; i++) if (expr[i] === '\\') i++;
      }
      i++;
    }
    if (i >= expr.length) fail(`no closing ${close}`);
    return expr.slice(start, i++);
  };
  const matchers = (body: string): string[] => {
    const labels: string[] = [];
    MATCHER.lastIndex = 0;
    while (MATCHER.lastIndex < body.length) {
      const at = MATCHER.lastIndex;
      const m = MATCHER.exec(body);
      if (!m || MATCHER.lastIndex === at) {
        if (body.slice(at).trim() === '') break;
        return fail(`cannot read the label matchers {${body}}`);
      }
      labels.push(m[1]!);
    }
    return labels;
  };

  while (true) {
    skipSpace();
    if (i >= expr.length) return out;
    const c = expr[i]!;
    if (c === '"' || c === "'") {
      until(c);
    } else if (c === '[') {
      until(']');
    } else if (c === '{') {
      fail('a selector without a metric name');
    } else if (c === '$') {
      if (!match(VARIABLE)) fail('a $ that is no variable');
    } else if (/[\d.]/.test(c)) {
      if (!match(NUMBER)) fail('a bad number');
    } else if ('()+-*/%^=!<>,'.includes(c)) {
      i++;
    } else {
      const name = match(IDENT);
      if (name === undefined) return fail(`unexpected ${JSON.stringify(c)}`);
      skipSpace();
      if (GROUPING.has(name)) {
        if (expr[i] !== '(') {
          if (name === 'group_left' || name === 'group_right') continue; // labels are optional there
          fail(`${name} without its label list`);
        }
        out.grouping.push(...until(')').split(',').map((s) => s.trim()).filter(Boolean));
      } else if (AGGREGATIONS.has(name)) {
        out.functions.push(name);
      } else if (KEYWORDS.has(name)) {
        continue;
      } else if (expr[i] === '(') {
        if (!FUNCTIONS.has(name)) fail(`unknown function ${name}`);
        out.functions.push(name);
      } else {
        const selector = { metric: name, labels: [] as string[] };
        if (expr[i] === '{') selector.labels = matchers(until('}'));
        out.selectors.push(selector);
      }
    }
  }
}
