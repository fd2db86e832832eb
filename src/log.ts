/**
 * The project's logger: a small interface (`debug/info/warn/error(msg, data?)`, `child(...)`) over pino.
 *
 * Two formats. `json`: one JSON object per line (`level` as a word, `time` in ISO 8601, `pid`, `hostname`, the bound
 * context such as `name`, `role`, `kind`, `partition`, then the call's data and `msg`), what a log collector reads.
 * `pretty`: one readable line per event (pino-pretty), for a person at a terminal. `auto` picks `pretty` when stderr
 * is a terminal and `json` otherwise; the supervisor of `npm start` resolves it for its children, whose stderr is a
 * pipe to it (src/stack/supervisor.ts).
 *
 * Lines are written synchronously: a process that logs an error and exits at once (src/fatal.ts) loses nothing.
 */
import { createRequire } from 'node:module';
import { pino, stdSerializers, type DestinationStream, type Logger } from 'pino';

export type Level = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'auto' | 'json' | 'pretty';

/** Context bound to every line of a logger: `{ kind: 'stock', partition: 3 }`. A `name` among them extends the logger's name. */
export type LogFields = Record<string, unknown>;

export interface Log {
  debug(msg: string, data?: object): void;
  info(msg: string, data?: object): void;
  warn(msg: string, data?: object): void;
  error(msg: string, data?: object): void;
  /**
   * A logger for a part of this one. A string is a name, appended to this logger's with a `/` (`worker-0/controller`);
   * fields are bound to every line it writes, and a `name` among them is appended the same way.
   */
  child(nameOrFields: string | LogFields): Log;
}

export interface LogOptions {
  /** Where lines go, each ending in a newline; default: stderr. Tests pass a function to capture them. */
  write?: (line: string) => void;
  /** Default `auto`: `pretty` on a terminal; `json` otherwise, and always with `write`. */
  format?: LogFormat;
  /** Context bound to every line (the process's role, its worker index, ...). */
  fields?: LogFields;
}

/** `auto` made concrete: readable lines for a person at a terminal, JSON lines for everything else. */
export function resolveLogFormat(format: LogFormat, terminal: boolean = process.stderr.isTTY === true): 'json' | 'pretty' {
  return format === 'auto' ? (terminal ? 'pretty' : 'json') : format;
}

/** Keys the readable format leaves out: the same on every line of a process. */
const PRETTY_IGNORE = 'pid,hostname';

/**
 * `err` with message and stack (pino's serializer). Something thrown that is not an Error still becomes an object
 * with a `message`, so that `err` has one type in every line (a collector indexes a field with one type).
 */
const errSerializer = (value: unknown): unknown =>
  value !== null && typeof value === 'object' ? stdSerializers.err(value as Error) : { type: typeof value, message: String(value) };

/** An Error under any other key than `err` would be written as `{}` (it has no enumerable properties). */
function serializeErrors(data: Record<string, unknown>): Record<string, unknown> {
  let out = data;
  for (const key in data) {
    const value = data[key];
    if (key !== 'err' && value instanceof Error) {
      if (out === data) out = { ...data };
      out[key] = stdSerializers.err(value);
    }
  }
  return out;
}

/** pino-pretty, loaded only when a logger writes readable lines (a container's processes never do). */
function prettyStream(write: (line: string) => void, colorize: boolean): DestinationStream {
  const { prettyFactory } = createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
  // The factory's function turns a JSON line into a readable one at once; pino-pretty's own stream would do it on
  // a later tick, and a process that exits right after logging would lose the line.
  const prettify = prettyFactory({ colorize, ignore: PRETTY_IGNORE, translateTime: 'SYS:HH:MM:ss.l', singleLine: true });
  return { write: (line: string) => write(prettify(line)) };
}

function rootLogger(level: Level, format: 'json' | 'pretty', write: ((line: string) => void) | undefined): Logger {
  const common = {
    level,
    serializers: { err: errSerializer },
    formatters: { log: serializeErrors },
  };
  if (format === 'pretty') {
    return pino(common, prettyStream(write ?? ((line) => process.stderr.write(line)), !write && process.stderr.isTTY === true));
  }
  return pino(
    {
      ...common,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { ...common.formatters, level: (label: string) => ({ level: label }) },
    },
    write ? { write } : pino.destination({ dest: 2, sync: true }),
  );
}

const noop = () => {};

/**
 * `fields` are bound to every line in JSON. Readable lines leave them out: there the name in front of the message
 * says which process and part wrote it, and the same few fields on every line would hide what differs.
 */
function wrap(root: Logger, bindFields: boolean, fields: LogFields): Log {
  const p = root.child(bindFields ? fields : { name: fields.name });
  // A level below the logger's costs one call of an empty function: decided once here, not on every call.
  const at = (level: Level) =>
    p.isLevelEnabled(level) ? (msg: string, data?: object) => (data === undefined ? p[level](msg) : p[level](data, msg)) : noop;
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child(nameOrFields) {
      const more = typeof nameOrFields === 'string' ? { name: nameOrFields } : nameOrFields;
      const name = more.name === undefined ? fields.name : fields.name === undefined ? more.name : `${String(fields.name)}/${String(more.name)}`;
      // Bound again from the root rather than on top of `p`: pino would write a key bound twice (the name) twice.
      return wrap(root, bindFields, { ...fields, ...more, name });
    },
  };
}

/**
 * A logger named `name` at `level`. The third argument is where lines go (a function, as tests pass) or options:
 * the format, the destination, fields bound to every line.
 */
export function createLog(name: string, level: Level = 'info', options: ((line: string) => void) | LogOptions = {}): Log {
  const o: LogOptions = typeof options === 'function' ? { write: options } : options;
  const format = o.format === undefined || o.format === 'auto' ? (o.write ? 'json' : resolveLogFormat('auto')) : o.format;
  return wrap(rootLogger(level, format, o.write), format === 'json', { ...o.fields, name });
}
