/**
 * The command line of `npm run bench -- <scenario> [options]`, parsed by commander into one typed,
 * validated, frozen BenchOptions (or ScaleOptions for `scale`). Pure: no network, no files; `parseInvocation`
 * and `parseOptions` throw a UsageError (or, for --help, a HelpShown) instead of exiting, so tests can call them.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';

export const SCENARIOS = ['checkout-fresh', 'wdm-stress', 'reads', 'contention', 'mixed'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];
/**
 * Not a load of its own: runs checkout-fresh --start once per configuration (bench/scale-run.ts). Kept out of
 * SCENARIOS so that everything keyed on a load scenario (defaults, createScenario) stays as it is.
 */
export const SCALE = 'scale';

export const DEFAULT_URL = 'http://127.0.0.1:8000';
export const DEFAULT_CONNECTIONS = 256;
/** Checkout waits up to the system's request deadline (30 s by default) for the saga; leave room above it. */
export const DEFAULT_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_OUTSTANDING = 10_000;
export const DEFAULT_AUDIT_CONCURRENCY = 64;
/** Stock and credit that no run can use up: checkout-fresh, wdm-stress, reads and mixed never fail for lack of them. */
export const LARGE_AMOUNT = 1_000_000_000;

export interface BenchOptions {
  scenario: ScenarioName;
  url: string;
  /** Start the local stack on free ports with a fresh data directory, and stop it after the run. */
  start: boolean;
  /** Closed loop: requests in flight at once (and the Pool's connections in every model). */
  connections: number;
  /** Stop issuing requests after this long; undefined: a finite scenario runs until it is exhausted. */
  durationMs: number | undefined;
  /** Load sent before the measurement starts (not in the statistics; the duration counts after it). */
  warmupMs: number;
  /** Send PRIME_REQUESTS requests that change nothing and PRIME_SAGAS refused checkouts before the run (bench/scenarios.ts, primer and sagaPrimer). */
  prime: boolean;
  /** Stop after issuing this many requests. */
  requests: number | undefined;
  /** Open loop at this many requests per second; undefined: closed loop. */
  rate: number | undefined;
  /** Open loop: the most requests in flight; a request due past it is dropped and counted. */
  maxOutstanding: number;
  orders: number;
  items: number;
  users: number;
  /** contention: the hot items and the stock of each. */
  hotItems: number;
  stock: number;
  /** wdm-stress: virtual users, each checking out a random order once a second (back to back if unthrottled). */
  vus: number;
  unthrottled: boolean;
  /** batch_init before the load; without it the data already there is used (and nothing is audited). */
  init: boolean;
  audit: boolean;
  auditConcurrency: number;
  timeoutMs: number;
  seed: number;
  /** Parent of the report directories. */
  outDir: string;
  progress: boolean;
}

/** One stack shape of the scale scenario: worker processes, and partitions per kind (SHOP_PARTITIONS). */
export interface ScaleConfig {
  workers: number;
  partitions: number;
}

/** The shapes that answer "does a second worker help, do more partitions cost": see docs/perf/README.md. */
export const DEFAULT_SCALE_CONFIGS: readonly ScaleConfig[] = Object.freeze(
  [
    [1, 2],
    [1, 8],
    [2, 8],
    [1, 64],
    [2, 64],
    [4, 64],
  ].map(([workers, partitions]) => Object.freeze({ workers: workers!, partitions: partitions! })),
);
/** Smaller than checkout-fresh's 100,000: six stacks run one after the other. */
export const SCALE_DEFAULT_ORDERS = 60_000;
/** The limits of src/config.ts (workerProcesses, partitions), so a bad shape is refused before any stack starts. */
const SCALE_WORKERS_MAX = 256;
const SCALE_PARTITIONS_MAX = 4096;
const SCALE_ROUNDS_MAX = 100;

export interface ScaleOptions {
  scenario: typeof SCALE;
  configs: readonly ScaleConfig[];
  /** The whole list is run this many times, interleaved (round 1: every config, round 2: every config, ...). */
  rounds: number;
  /** Passed to every checkout-fresh run. */
  orders: number;
  connections: number;
  prime: boolean;
  /** One seed for every run, so every configuration checks out the same orders. */
  seed: number;
  /** Parent of the report directory <timestamp>-scale/. */
  outDir: string;
  /** Forward each run's output lines to stderr (they are kept in the run's output.log either way). */
  progress: boolean;
}

/** What the command line asks for: one load scenario, or the scale series of them. */
export type Invocation = Readonly<BenchOptions> | Readonly<ScaleOptions>;

/** { workers: 1, partitions: 2 } -> "1x2": the label of a configuration, also its name in reports and on the command line. */
export function configLabel(c: ScaleConfig): string {
  return `${c.workers}x${c.partitions}`;
}

/** "1x2,1x64,2x64" -> the configurations in that order; each workers x partitions per kind, no repeats. */
export function parseConfigs(raw: string): ScaleConfig[] {
  const configs: ScaleConfig[] = [];
  for (const part of raw.split(',').map((p) => p.trim())) {
    const m = /^(\d+)[xX](\d+)$/.exec(part);
    if (!m) throw new InvalidArgumentError(`expected workers x partitions like 1x2,2x64, got ${JSON.stringify(part)} in ${JSON.stringify(raw)}`);
    const c = { workers: Number(m[1]), partitions: Number(m[2]) };
    if (c.workers < 1 || c.workers > SCALE_WORKERS_MAX) throw new InvalidArgumentError(`workers must be in 1..${SCALE_WORKERS_MAX}, got ${part}`);
    if (c.partitions < 1 || c.partitions > SCALE_PARTITIONS_MAX) throw new InvalidArgumentError(`partitions must be in 1..${SCALE_PARTITIONS_MAX}, got ${part}`);
    if (configs.some((o) => configLabel(o) === configLabel(c))) throw new InvalidArgumentError(`${part} is listed twice; use --rounds to repeat configurations`);
    configs.push(Object.freeze(c));
  }
  return configs;
}

/** A bad command line: the message says which option and what is allowed. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** --help or --version was asked for; `text` is what to print (exit 0). */
export class HelpShown extends Error {
  override name = 'HelpShown';
  constructor(readonly text: string) {
    super('help shown');
  }
}

interface Defaults {
  orders: number;
  items: number;
  users: number;
  /** undefined: until every order is checked out. */
  durationMs: number | undefined;
}

/** Per scenario: how much data batch_init creates and how long the load runs when the command line does not say. */
export const SCENARIO_DEFAULTS: Readonly<Record<ScenarioName, Readonly<Defaults>>> = {
  'checkout-fresh': { orders: 100_000, items: 100_000, users: 100_000, durationMs: undefined },
  'wdm-stress': { orders: 100_000, items: 100_000, users: 100_000, durationMs: 60_000 },
  reads: { orders: 100_000, items: 100_000, users: 100_000, durationMs: 30_000 },
  contention: { orders: 10_000, items: 5, users: 10_000, durationMs: undefined },
  mixed: { orders: 10_000, items: 10_000, users: 10_000, durationMs: 30_000 },
};

const SCENARIO_HELP: Record<ScenarioName, string> = {
  'checkout-fresh': 'batch_init N users, items (large credit and stock, price 1) and orders; check out orders 0..N-1 once each',
  'wdm-stress': 'the course stress test: batch_init N of each (default 100000); virtual users check out random orders once a second',
  reads: 'GET /stock/find, /payment/find_user, /orders/find of random batch_init\'ed ids',
  contention: 'a few hot items with little stock, many orders on them, concurrent checkouts (400 insufficient_stock is expected)',
  mixed: 'creates (item, user, order), addItem, add stock/funds, checkouts and finds in a web-shop-like mix',
};
const SCALE_HELP =
  'checkout-fresh --start once per --configs (workers x partitions), each in a fresh process and stack; a table per configuration (checkouts/s, latency, stalls, 503s, CPU per checkout by process) and ratios between them';

function count(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (raw: string): number => {
    const n = /^\d+$/.test(raw.replace(/_/g, '')) ? Number(raw.replace(/_/g, '')) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer in ${min}..${max}, got ${JSON.stringify(raw)}`);
    return n;
  };
}

/** "30", "30s", "500ms", "2m", "1h" -> milliseconds; a bare number is seconds. */
export function parseDuration(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(raw.trim());
  if (!m) throw new InvalidArgumentError(`expected a duration like 30, 30s, 500ms, 2m or 1h, got ${JSON.stringify(raw)}`);
  const unitMs = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  const ms = Math.round(Number(m[1]) * unitMs);
  if (ms <= 0) throw new InvalidArgumentError(`a duration must be above 0, got ${JSON.stringify(raw)}`);
  return ms;
}

function parseDurationOrZero(raw: string): number {
  return /^0+(ms|s|m|h)?$/.test(raw.trim()) ? 0 : parseDuration(raw);
}

/** "2000", "2000/s", "2k", "2k/s" -> requests per second. */
export function parseRate(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(k)?(?:\/s)?$/.exec(raw.trim());
  const rate = m ? Number(m[1]) * (m[2] ? 1000 : 1) : NaN;
  if (!(rate > 0) || rate > 10_000_000) throw new InvalidArgumentError(`expected a rate like 2000, 2000/s or 2k/s, got ${JSON.stringify(raw)}`);
  return rate;
}

function parseUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new InvalidArgumentError(`expected a URL like ${DEFAULT_URL}, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'http:') throw new InvalidArgumentError(`only http:// is supported, got ${JSON.stringify(raw)}`);
  if (url.pathname !== '/' || url.search) throw new InvalidArgumentError(`give the origin only (${url.origin}), got ${JSON.stringify(raw)}`);
  return url.origin;
}

/** The commander program; `run.ts` prints its help, `parseOptions` parses with it. */
export function createProgram(): Command {
  const program = new Command('npm run bench --')
    .description('Load generator for the webshop API: closed or open loop, HDR latency percentiles, a report directory, a conservation audit.')
    .usage('<scenario> [options]')
    .argument('<scenario>', `one of: ${[...SCENARIOS, SCALE].join(', ')}`)
    .addOption(new Option('--url <url>', 'the API to load (must answer the API of docs/api.md)').default(DEFAULT_URL).argParser(parseUrl))
    .option('--start', 'start the local stack (nats, redis, workers, gateway) on free ports with a fresh data directory; stop it in order after the run', false)
    .addOption(new Option('-c, --connections <n>', 'closed loop: requests in flight at once; in every model the connections of the pool').default(DEFAULT_CONNECTIONS).argParser(count(1, 100_000)))
    .addOption(new Option('-d, --duration <time>', 'stop after this long: 30, 30s, 500ms, 2m (default: reads, mixed 30s; wdm-stress 60s; checkout-fresh, contention: until every order is checked out)').argParser(parseDuration))
    .addOption(new Option('-w, --warmup <time>', 'send load this long before measuring (JIT, caches, connections); not in the figures, the audit still counts it').default(0, '0').argParser(parseDurationOrZero))
    .option('--no-prime', 'skip what is sent before the run, unmeasured, to bring the generator\'s and the system\'s code out of the interpreter: 20,000 requests that change nothing (reads of a missing item, checkouts of a missing order) and 8,192 refused checkouts of orders of its own (whole sagas, across workers when there are several; no stock or credit changes)')
    .addOption(new Option('-n, --requests <n>', 'stop after issuing this many requests').argParser(count(1)))
    .addOption(new Option('-r, --rate <r/s>', 'open loop at this rate (2000, 2000/s, 2k/s); latency counts from the intended send time').argParser(parseRate))
    .addOption(new Option('--max-outstanding <n>', 'open loop: most requests in flight; a request due past it is dropped and counted').default(DEFAULT_MAX_OUTSTANDING).argParser(count(1)))
    .addOption(new Option('--orders <n>', `orders to batch_init (default: checkout-fresh, wdm-stress, reads 100000; contention, mixed 10000; scale ${SCALE_DEFAULT_ORDERS} per run)`).argParser(count(1)))
    .addOption(new Option('--items <n>', 'items to batch_init (default: like --orders; contention: --hot-items)').argParser(count(1)))
    .addOption(new Option('--users <n>', 'users to batch_init (default: like --orders)').argParser(count(1)))
    .addOption(new Option('--hot-items <n>', 'contention: the hot items every order draws from').default(5).argParser(count(1)))
    .addOption(new Option('--stock <n>', 'contention: starting stock of each hot item').default(100).argParser(count(0)))
    .addOption(new Option('--vus <n>', 'wdm-stress: virtual users').default(1000).argParser(count(1, 1_000_000)))
    .option('--unthrottled', 'wdm-stress: virtual users send back to back instead of once a second', false)
    .option('--no-init', 'skip batch_init and use the data already there (no audit then)')
    .option('--no-audit', 'skip the conservation audit after the run')
    .addOption(new Option('--audit-concurrency <n>', 'reads in flight during the audit').default(DEFAULT_AUDIT_CONCURRENCY).argParser(count(1, 10_000)))
    .addOption(new Option('--timeout <ms>', 'per-request timeout in ms (a checkout may wait for the system\'s 30 s deadline)').default(DEFAULT_TIMEOUT_MS).argParser(count(1)))
    .addOption(new Option('--seed <n>', 'seed of the random ids, for a repeatable run (default: random)').argParser(count(0, 2 ** 32 - 1)))
    .option('--out <dir>', 'parent directory of the report directory <timestamp>-<scenario>/', 'bench/out')
    .option('--no-progress', 'no progress on stderr (a bar on a terminal, else a status line every 10 s); scale: the runs\' output is not echoed')
    .addOption(new Option('--configs <list>', `scale: workers x partitions per kind to run, in order (default ${DEFAULT_SCALE_CONFIGS.map(configLabel).join(',')})`).argParser(parseConfigs))
    .addOption(new Option('--rounds <n>', 'scale: run the whole list this many times, interleaved; the tables show the median per configuration').default(1).argParser(count(1, SCALE_ROUNDS_MAX)))
    .addHelpText(
      'after',
      '\nScenarios:\n' +
        SCENARIOS.map((s) => `  ${s.padEnd(15)} ${SCENARIO_HELP[s]}`).join('\n') +
        `\n  ${SCALE.padEnd(15)} ${SCALE_HELP}` +
        '\n\nExamples:\n' +
        '  npm run bench -- checkout-fresh --orders 20000 --connections 256\n' +
        '  npm run bench -- reads --duration 10 --rate 5k/s\n' +
        '  npm run bench -- contention --start\n' +
        '  npm run bench -- wdm-stress --vus 2000 --duration 2m\n' +
        '  npm run bench -- scale --configs 1x2,2x8 --orders 20000 --rounds 3\n' +
        '\nExit status: 0 done (audit PASS or skipped), 1 audit FAIL, 2 bad usage or the run could not start.\n',
    )
    .exitOverride()
    .configureOutput({ writeOut: () => {}, writeErr: () => {} })
    .allowExcessArguments(false);
  return program;
}

interface Raw {
  url: string;
  start: boolean;
  connections: number;
  duration?: number;
  warmup: number;
  prime: boolean;
  requests?: number;
  rate?: number;
  maxOutstanding: number;
  orders?: number;
  items?: number;
  users?: number;
  hotItems: number;
  stock: number;
  vus: number;
  unthrottled: boolean;
  init: boolean;
  audit: boolean;
  auditConcurrency: number;
  timeout: number;
  seed?: number;
  out: string;
  progress: boolean;
  configs?: ScaleConfig[];
  rounds: number;
}

/** Options a scale run passes on to each checkout-fresh run, or uses itself; any other is refused for scale. */
const SCALE_OPTIONS = ['orders', 'connections', 'prime', 'seed', 'out', 'progress', 'configs', 'rounds', 'start'] as const;
/** Options of the scale scenario only. */
const SCALE_ONLY_OPTIONS = ['configs', 'rounds'] as const;

/**
 * `argv`: the arguments after the script (process.argv.slice(2)). `randomSeed` picks the seed when --seed is
 * absent (injected so the function stays pure). A load scenario gives BenchOptions, `scale` gives ScaleOptions.
 */
export function parseInvocation(argv: readonly string[], randomSeed: () => number = () => Math.floor(Math.random() * 2 ** 32)): Invocation {
  const program = createProgram();
  let helpText = '';
  program.configureOutput({ writeOut: (s) => (helpText += s), writeErr: () => {} });
  try {
    program.parse([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version') throw new HelpShown(helpText);
      throw new UsageError(err.message.replace(/^error: /, ''));
    }
    throw err;
  }
  const scenario = program.args[0] as string;
  const raw = program.opts<Raw>();
  const given = (name: string) => program.getOptionValueSource(name) === 'cli';
  /** The flag as typed: --no-init for a negated option, --max-outstanding for maxOutstanding. */
  const flag = (name: string) => program.options.find((opt) => opt.attributeName() === name)?.long ?? name;
  if (scenario === SCALE) {
    const refused = program.options.map((opt) => opt.attributeName()).filter((name) => given(name) && !(SCALE_OPTIONS as readonly string[]).includes(name));
    if (refused.length > 0) {
      throw new UsageError(
        `scale runs checkout-fresh --start on stacks of its own; it does not take ${refused.map(flag).join(', ')} ` +
          `(it takes ${SCALE_OPTIONS.filter((n) => n !== 'start').map(flag).join(', ')})`,
      );
    }
    return Object.freeze({
      scenario: SCALE,
      configs: Object.freeze(raw.configs ?? [...DEFAULT_SCALE_CONFIGS]),
      rounds: raw.rounds,
      orders: raw.orders ?? SCALE_DEFAULT_ORDERS,
      connections: raw.connections,
      prime: raw.prime,
      seed: raw.seed ?? randomSeed(),
      outDir: raw.out,
      progress: raw.progress,
    });
  }
  if (!(SCENARIOS as readonly string[]).includes(scenario)) {
    throw new UsageError(`unknown scenario ${JSON.stringify(scenario)}; choose one of ${[...SCENARIOS, SCALE].join(', ')}`);
  }
  const scaleOnly = SCALE_ONLY_OPTIONS.filter(given);
  if (scaleOnly.length > 0) throw new UsageError(`${scaleOnly.map(flag).join(' and ')} ${scaleOnly.length > 1 ? 'are options' : 'is an option'} of the scale scenario; ${scenario} does not take ${scaleOnly.length > 1 ? 'them' : 'it'}`);
  const name = scenario as ScenarioName;
  const defaults = SCENARIO_DEFAULTS[name];
  const urlGiven = given('url');
  if (raw.start && urlGiven) throw new UsageError('--start runs the stack on free ports and loads it; drop --url (or drop --start to load a running system)');
  if (name === 'contention' && raw.items !== undefined) throw new UsageError('contention takes --hot-items, not --items');
  const orders = raw.orders ?? defaults.orders;
  const options: BenchOptions = {
    scenario: name,
    url: raw.url,
    start: raw.start,
    connections: raw.connections,
    durationMs: raw.duration ?? defaults.durationMs,
    warmupMs: raw.warmup,
    prime: raw.prime,
    requests: raw.requests,
    rate: raw.rate,
    maxOutstanding: raw.maxOutstanding,
    orders,
    items: name === 'contention' ? raw.hotItems : raw.items ?? (raw.orders !== undefined ? orders : defaults.items),
    users: raw.users ?? (raw.orders !== undefined ? orders : defaults.users),
    hotItems: raw.hotItems,
    stock: raw.stock,
    vus: raw.vus,
    unthrottled: raw.unthrottled,
    init: raw.init,
    audit: raw.audit && raw.init,
    auditConcurrency: raw.auditConcurrency,
    timeoutMs: raw.timeout,
    seed: raw.seed ?? randomSeed(),
    outDir: raw.out,
    progress: raw.progress,
  };
  if (!raw.init && (name === 'checkout-fresh' || name === 'contention')) {
    throw new UsageError(`${name} needs fresh orders: it cannot run with --no-init`);
  }
  return Object.freeze(options);
}

/** A load scenario's options; `scale` is refused here (parseInvocation takes it). */
export function parseOptions(argv: readonly string[], randomSeed?: () => number): Readonly<BenchOptions> {
  const invocation = parseInvocation(argv, randomSeed);
  if (invocation.scenario === SCALE) throw new UsageError('scale is a series of checkout-fresh runs, not a load of its own (parseInvocation takes it)');
  return invocation;
}
