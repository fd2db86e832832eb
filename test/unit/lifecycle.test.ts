/**
 * The lifecycle of a partition runner (src/datapath/lifecycle.ts): every state met by every event, with the change
 * and the actions it leads to, or its refusal.
 */
import t from 'tap';
import { failedAgain, isActive, lifecycleStep, PARTITION_RETRY_MAX_MS, retryPauseMs, type LifecycleAction, type LifecycleEvent, type LifecycleStep, type RunnerState } from '../../src/datapath/lifecycle.js';

const STATES: RunnerState[] = ['idle', 'starting', 'running', 'restarting', 'refused', 'stopping', 'stopped', 'fenced'];
const EVENTS: LifecycleEvent['kind'][] = ['start', 'opened', 'startFailed', 'refuse', 'batchFailed', 'restartFailed', 'fence', 'stop', 'released'];

const step = (to: RunnerState, ...actions: LifecycleAction['do'][]): LifecycleStep => ({ state: to, actions: actions.map((a) => ({ do: a }) as LifecycleAction) });

/** Every transition there is, by state and event; any pair not listed is refused. */
const ALLOWED: Partial<Record<RunnerState, Partial<Record<LifecycleEvent['kind'], LifecycleStep>>>> = {
  idle: { start: step('starting') },
  starting: {
    opened: step('running', 'serve'),
    startFailed: step('stopped'),
    refuse: step('refused', 'recheck'),
    fence: step('fenced', 'drop', 'release', 'tell-owner'),
    stop: step('stopping', 'release'),
  },
  running: {
    batchFailed: step('restarting', 'release', 'retry'),
    fence: step('fenced', 'drop', 'release', 'tell-owner'),
    stop: step('stopping', 'release'),
  },
  restarting: { start: step('starting'), stop: step('stopping', 'release') },
  refused: { start: step('starting'), stop: step('stopping', 'release') },
  stopping: { released: step('stopped') },
  stopped: { restartFailed: step('restarting') },
  fenced: {},
};

t.test('every transition, with its actions in order', async (t) => {
  let count = 0;
  for (const [from, byEvent] of Object.entries(ALLOWED) as [RunnerState, Partial<Record<LifecycleEvent['kind'], LifecycleStep>>][]) {
    for (const [kind, expected] of Object.entries(byEvent) as [LifecycleEvent['kind'], LifecycleStep][]) {
      t.same(lifecycleStep(from, { kind } as LifecycleEvent), expected, `${from} -${kind}-> ${expected.state}`);
      count++;
    }
  }
  t.equal(count, 15, 'fifteen transitions');
});

t.test('every other event is refused: the state stays and nothing is done', async (t) => {
  let refused = 0;
  for (const from of STATES) {
    for (const kind of EVENTS) {
      if (ALLOWED[from]?.[kind]) continue;
      t.equal(lifecycleStep(from, { kind } as LifecycleEvent), undefined, `${from} refuses ${kind}`);
      refused++;
    }
  }
  t.equal(refused, STATES.length * EVENTS.length - 15);
});

t.test('named cases that matter to the runner', async (t) => {
  t.equal(lifecycleStep('running', { kind: 'start' }), undefined, 'a running partition is not started twice');
  t.equal(lifecycleStep('stopped', { kind: 'start' }), undefined, 'a stopped runner is not started again (the worker makes a new one)');
  t.equal(lifecycleStep('restarting', { kind: 'batchFailed' }), undefined, 'a second failure while restarting does not restart twice');
  t.equal(lifecycleStep('stopping', { kind: 'refuse' }), undefined, 'a stop during the start wins over a refusal found meanwhile');
  t.equal(lifecycleStep('stopping', { kind: 'opened' }), undefined, 'stopped while starting: it does not serve');
  t.equal(lifecycleStep('fenced', { kind: 'stop' }), undefined, 'a fenced runner has let go already');
  t.equal(lifecycleStep('restarting', { kind: 'fence' }), undefined, 'only a runner that reads is fenced');
});

t.test('a partition through a failure, a refusal and a stop', async (t) => {
  const walk = (events: LifecycleEvent['kind'][]): RunnerState[] => {
    let state: RunnerState = 'idle';
    return events.map((kind) => {
      const next = lifecycleStep(state, { kind } as LifecycleEvent);
      if (!next) throw new Error(`${state} refused ${kind}`);
      return (state = next.state);
    });
  };
  t.same(walk(['start', 'opened', 'batchFailed', 'start', 'startFailed', 'restartFailed', 'start', 'refuse', 'start', 'opened', 'stop', 'released']), [
    'starting',
    'running',
    'restarting',
    'starting',
    'stopped',
    'restarting',
    'starting',
    'refused',
    'starting',
    'running',
    'stopping',
    'stopped',
  ]);
});

t.test('active: reading its stream or being made to', async (t) => {
  t.same(
    STATES.filter((s) => isActive(s)),
    ['starting', 'running'],
  );
});

t.test('the trouble counts failed attempts until a commit ends it', async (t) => {
  const first = failedAgain(undefined, 'restarting', 'Redis away');
  t.same(first, { state: 'restarting', attempts: 1, error: 'Redis away' });
  t.same(failedAgain(first, 'refused', 'stream behind'), { state: 'refused', attempts: 2, error: 'stream behind' }, 'the newest state and error, one attempt more');
});

t.test('the retry pause doubles from retryBackoffMs up to PARTITION_RETRY_MAX_MS', async (t) => {
  t.same(
    [1, 2, 3, 4].map((n) => retryPauseMs(n, 50)),
    [50, 100, 200, 400],
  );
  t.equal(retryPauseMs(6, 50), PARTITION_RETRY_MAX_MS, 'capped');
  t.equal(retryPauseMs(10_000, 50), PARTITION_RETRY_MAX_MS, 'no overflow however many attempts');
});
