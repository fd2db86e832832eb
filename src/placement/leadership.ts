/**
 * The controller candidate's leadership: election.ts's electionStep decides, this performs its writes on the
 * `leader` key of the control bucket and reports how they went.
 */
import type { KV } from 'nats';
import type { Clock } from '../clock.js';
import type { Log } from '../log.js';
import { electionStep, leads, newElection, type ElectionEvent, type ElectionLimits, type SeenLeader } from './election.js';
import { toBytes } from './placement.js';

export interface LeadershipOptions {
  /** This candidate's name in the leader key. */
  id: string;
  control: KV;
  log: Log;
  clock: Clock;
  limits: ElectionLimits;
  /** false: lead without election (tests that force a split brain). */
  elect: boolean;
  /** The controller has started (every watch has delivered what is there). */
  started: () => boolean;
}

export interface Leadership {
  /** Leads now, with a leadership renewed within the last lease; without election, from the first tick on. */
  leadsNow(): boolean;
  /** The `leader` key as this candidate last saw it. */
  readonly seen: SeenLeader | undefined;
  decide(event: ElectionEvent): Promise<void>;
}

export function createLeadership({ id, control, log, clock, limits, elect, started }: LeadershipOptions): Leadership {
  let election = newElection(id);

  async function decide(event: ElectionEvent): Promise<void> {
    const step = electionStep(election, event, limits);
    election = step.state;
    for (const action of step.actions) {
      switch (action.do) {
        case 'log':
          log[action.level](action.msg, action.fields);
          break;
        case 'write': {
          const { claim } = action;
          const value = toBytes({ id, at: claim.at });
          let rev: number;
          try {
            rev = claim.op === 'create' ? await control.create('leader', value) : await control.update('leader', value, claim.rev);
          } catch (err) {
            await decide({ kind: 'refused', claim, err });
            break;
          }
          await decide({ kind: 'written', claim, rev });
          break;
        }
        case 'resign':
          // Hand over at once instead of after a lease: a candidate that sees the key deleted creates it.
          await control.delete('leader', { previousSeq: action.rev }).catch(() => {});
          break;
      }
    }
  }

  return {
    leadsNow: () => (elect ? leads(election, clock.now(), limits) : started()),
    get seen() {
      return election.seen;
    },
    decide,
  };
}
