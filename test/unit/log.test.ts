/**
 * The logger (src/log.ts): what a JSON line holds, how children bind context, how errors are written, the readable
 * format, and that a call below the level does no work.
 */
import { hostname } from 'node:os';
import t from 'tap';
import { faultLog } from '../../src/faults.js';
import { createLog, resolveLogFormat } from '../../src/log.js';
import { captureLog } from '../helpers/logs.js';

t.test('a JSON line: level as a word, ISO time, pid, hostname, name, the data and the message', async (t) => {
  const { log, lines, raw } = captureLog('worker-0', 'info');
  log.info('took 100% of it, %s unchanged', { epoch: 5 });
  t.equal(raw.length, 1);
  t.ok(raw[0]!.endsWith('}\n') && !raw[0]!.slice(0, -1).includes('\n'), 'one line, ending in a newline');
  const [line] = lines;
  t.match(line, { level: 'info', pid: process.pid, hostname: hostname(), name: 'worker-0', epoch: 5, msg: 'took 100% of it, %s unchanged' });
  t.ok(Math.abs(Date.parse(line!.time) - Date.now()) < 60_000 && line!.time.endsWith('Z'), `an ISO time in UTC: ${line!.time}`);
});

t.test('levels: below the logger’s level nothing is written, and nothing of the call is looked at', async (t) => {
  const { log, lines } = captureLog('x', 'warn');
  // Data whose every read throws: a call that is filtered out must not serialize it (or even enumerate it).
  const untouchable = new Proxy({}, { ownKeys: () => t.fail('read') as never, get: () => t.fail('read') as never });
  log.debug('no', untouchable);
  log.info('no', untouchable);
  log.warn('yes');
  log.error('yes too');
  t.same(lines.map((l) => [l.level, l.msg]), [['warn', 'yes'], ['error', 'yes too']]);
  const debug = createLog('y', 'debug', () => {});
  t.not(debug.debug, log.debug, 'at debug level, debug is a real method');
  t.equal(log.debug, log.info, 'below the level every method is the same empty function');
});

t.test('children: a name is appended to the parent’s, fields are bound to every line, each key written once', async (t) => {
  const { log, lines, raw } = captureLog('worker-0', 'debug');
  const proc = log.child({ role: 'worker', workerIndex: 0 });
  const part = proc.child({ name: 'stock-3', kind: 'stock', partition: 3 });
  part.info('owned', { epoch: 2 });
  part.child('controller').warn('leading');
  proc.child({ workerId: 'worker-0-abc' }).info('registered');
  t.match(lines, [
    { name: 'worker-0/stock-3', role: 'worker', workerIndex: 0, kind: 'stock', partition: 3, epoch: 2, msg: 'owned' },
    { name: 'worker-0/stock-3/controller', kind: 'stock', partition: 3, level: 'warn', msg: 'leading' },
    { name: 'worker-0', workerId: 'worker-0-abc', msg: 'registered' },
  ]);
  t.notOk('kind' in lines[2]!, 'a sibling does not get its brother’s fields');
  for (const line of raw) t.equal(line.match(/"name":/g)?.length, 1, `"name" once in ${line.trim()}`);
});

t.test('errors are written with their type, message and stack, under any key; anything else thrown as a message', async (t) => {
  const { log, lines } = captureLog('x');
  const boom = new TypeError('boom');
  log.error('failed', { err: boom, cause: new Error('inner'), attempts: 2 });
  log.error('thrown a string', { err: 'just text' });
  log.error('thrown a number', { err: 42 });
  t.match(lines[0], {
    err: { type: 'TypeError', message: 'boom', stack: /^TypeError: boom\n\s+at / },
    cause: { type: 'Error', message: 'inner', stack: /^Error: inner\n/ },
    attempts: 2,
  });
  t.match(lines[1], { err: { type: 'string', message: 'just text' } }, 'err is an object in every line, whatever was thrown');
  t.match(lines[2], { err: { type: 'number', message: '42' } });
});

t.test('the fault log says what it dropped, as fields', async (t) => {
  const { log, lines } = captureLog('x', 'warn');
  let now = 0;
  const fault = faultLog(log.child({ kind: 'stock', partition: 1 }), 1000, () => now);
  fault('bad', { head: 'c1' });
  fault('bad');
  now = 1000;
  fault('bad', { head: 'c2' });
  t.match(lines, [
    { level: 'warn', msg: 'ignored: bad', kind: 'stock', partition: 1, head: 'c1', nextLineAfterMs: 1000 },
    { level: 'warn', msg: 'ignored: bad', head: 'c2', alsoIgnoredSinceLastLine: 1 },
  ]);
  t.notOk('alsoIgnoredSinceLastLine' in lines[0]!);
});

t.test('the readable format: one line per event with time, level, name and message; the error with its stack', async (t) => {
  const out: string[] = [];
  const log = createLog('worker-0', 'info', { format: 'pretty', write: (l) => out.push(l), fields: { role: 'worker' } });
  log.child({ name: 'stock-3', kind: 'stock', partition: 3 }).info('owned', { epoch: 2 });
  log.error('batch failed', { err: new Error('boom') });
  t.match(out[0], /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO \(worker-0\/stock-3\): owned \{"epoch":2\}\n$/, 'the context is in the name, not repeated as fields');
  t.notMatch(out.join(''), /\x1b\[/, 'no colours when the lines do not go to a terminal');
  const error = out.slice(1).join('');
  t.match(error, /^\[[\d:.]+\] ERROR \(worker-0\): batch failed/);
  t.match(error, /Error: boom\n\s+at /, 'with the stack');
});

t.test('auto: readable on a terminal, JSON anywhere else', async (t) => {
  t.equal(resolveLogFormat('auto', true), 'pretty');
  t.equal(resolveLogFormat('auto', false), 'json');
  t.equal(resolveLogFormat('json', true), 'json', 'an explicit format is kept');
  t.equal(resolveLogFormat('pretty', false), 'pretty');
  const out: string[] = [];
  createLog('x', 'info', (l) => out.push(l)).info('hi');
  t.match(JSON.parse(out[0]!), { msg: 'hi' }, 'a test’s sink gets JSON');
});
