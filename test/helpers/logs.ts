/** Log lines as a test reads them: the JSON objects a logger writes, rather than their layout. */
import { createLog, type Level, type Log } from '../../src/log.js';

/** One JSON log line (src/log.ts): the fields every line has, and whatever the call and its logger bound. */
export interface LogLine {
  level: Level;
  time: string;
  pid: number;
  hostname: string;
  name: string;
  msg: string;
  [field: string]: unknown;
}

/** A logger at `level` whose lines the test reads back, parsed, in the order they were written. */
export function captureLog(name: string, level: Level = 'debug'): { log: Log; lines: LogLine[]; raw: string[] } {
  const lines: LogLine[] = [];
  const raw: string[] = [];
  const log = createLog(name, level, (line) => {
    raw.push(line);
    lines.push(JSON.parse(line) as LogLine);
  });
  return { log, lines, raw };
}

/** The JSON log lines in a process's output; other lines (a server's, a stack trace printed by Node) are skipped. */
export function logLines(output: string): LogLine[] {
  const lines: LogLine[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line) as LogLine);
    } catch {
      // a line cut short by a kill, or not ours
    }
  }
  return lines;
}
