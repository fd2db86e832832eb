/**
 * What a process does with an error nobody handled (an uncaught exception, an unhandled rejection): some part of it
 * is now in a state nobody planned for, so it logs the error with what the process is and exits with code 1 at once,
 * and its supervisor starts a fresh one. Every commit is fenced by its epoch and every command waits in its stream,
 * so exiting loses nothing that running on half-broken could keep.
 */
import type { Log } from './log.js';

export function exitOnFatal(log: Log, context: Record<string, unknown> = {}, exit: (code: number) => void = (code) => process.exit(code)): void {
  let ending = false;
  const die = (what: string) => (err: unknown) => {
    if (ending) return; // a second one while exiting says nothing new
    ending = true;
    try {
      // The line carries the pid (every line does) and the error with its message and stack (src/log.ts).
      log.error(`${what}; exiting with code 1`, { ...context, err });
    } finally {
      exit(1);
    }
  };
  process.on('uncaughtException', die('uncaught exception'));
  process.on('unhandledRejection', die('unhandled rejection'));
}
