/** A small leveled logger writing one line per event to stderr: `level name message {json}`. */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Log {
  debug(msg: string, data?: object): void;
  info(msg: string, data?: object): void;
  warn(msg: string, data?: object): void;
  error(msg: string, data?: object): void;
  child(name: string): Log;
}

export function createLog(name: string, level: Level = 'info', write: (line: string) => void = (l) => process.stderr.write(l)): Log {
  const min = RANK[level];
  const emit = (lvl: Level) => (msg: string, data?: object) => {
    if (RANK[lvl] < min) return;
    const extra = data ? ' ' + JSON.stringify(data, (_k, v) => (v instanceof Error ? v.message : v)) : '';
    write(`${lvl.padEnd(5)} ${name} ${msg}${extra}\n`);
  };
  return {
    debug: emit('debug'),
    info: emit('info'),
    warn: emit('warn'),
    error: emit('error'),
    child: (sub) => createLog(`${name}/${sub}`, level, write),
  };
}
