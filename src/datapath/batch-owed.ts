/**
 * What a committed batch owes, decided without I/O: each share's outbox entry and the field it is stored under, the
 * batch's replies gathered into one entry, the saga messages its shares send elsewhere (not stored: the partitions'
 * state sends them again, datapath/reminders.ts), and the acknowledgements of older workers' parcels it applied.
 */
import type { Outgoing } from '../actors/types.js';
import type { Parcel } from './courier.js';
import { emptyEntry, owesNothing, packCommands, type OutboxEntry } from './outbox.js';
import { addSend, type Share, type Sends } from './batch-share.js';
import type { Inbound } from './participant.js';

/**
 * What a partition's share of a batch owes once committed: its outbox entry and the field it is stored under, its saga
 * messages, and those that may leave later (the actor's `deferrable`: forgets), which the courier sends with others.
 */
export interface Owed {
  field: string;
  entry: OutboxEntry | null;
  parcels: Parcel[];
  later: Outgoing[];
}

/** What owedBy reads of a share. */
export type Owing = Pick<Share, 'kind' | 'partition' | 'actor' | 'last' | 'local' | 'replies' | 'dead' | 'sends'>;

/** Commands for partitions elsewhere as parcels: per partition, merged by the sender's actor, as few as fit. */
export function parcelsOf(sends: Iterable<Sends>, merge: ((cmds: unknown[]) => unknown[]) | undefined): Parcel[] {
  const parcels: Parcel[] = [];
  for (const { kind, partition, cmds } of sends) {
    for (const data of packCommands(merge ? merge(cmds) : cmds)) parcels.push([kind, partition, '', data]);
  }
  return parcels;
}

/** The same, from a list of outgoing commands in the order they were made. */
export function parcelsOfOutgoing(out: readonly Outgoing[], merge: ((cmds: unknown[]) => unknown[]) | undefined): Parcel[] {
  const sends = new Map<string, Sends>();
  for (const o of out) addSend(sends, o);
  return parcelsOf(sends.values(), merge);
}

/** The commands to send now, and those the actor lets leave later (`deferrable`), apart. */
function splitLater(sends: Map<string, Sends>, deferrable: ((cmd: unknown) => boolean) | undefined): { now: Iterable<Sends>; later: Outgoing[] } {
  if (!deferrable) return { now: sends.values(), later: [] };
  const now: Sends[] = [];
  const later: Outgoing[] = [];
  for (const s of sends.values()) {
    const cmds = s.cmds.filter((cmd) => {
      if (!deferrable(cmd)) return true;
      later.push({ kind: s.kind, partition: s.partition, cmd });
      return false;
    });
    if (cmds.length > 0) now.push(cmds.length === s.cmds.length ? s : { ...s, cmds });
  }
  return { now, later };
}

/** What a share owes once committed: replies and dead letters in its outbox entry, and its saga messages. */
export function owedBy(share: Owing): Owed {
  const entry = emptyEntry();
  entry.replies = share.replies;
  entry.dead = share.dead;
  const { now, later } = splitLater(share.sends, share.actor.deferrable);
  const parcels = parcelsOf(now, share.actor.mergeOutgoing);
  if (owesNothing(entry)) return { field: '', entry: null, parcels, later };
  return { field: `${share.last}.${share.local}`, entry, parcels, later };
}

const onlyReplies = (e: OutboxEntry) => e.parcels.length === 0 && e.dead.length === 0;

/**
 * The replies of a batch travel in one stored outbox entry, not in one per partition (issue 20: every order
 * partition of a batch wrote an entry of replies and deleted it again, the largest fixed cost of a partition). They go
 * to an entry that is stored anyway (one with dead letters), else to the first partition's; the other
 * partitions then owe nothing. Any owner can send a reply (it is a gateway's inbox and bytes), so whoever re-sends
 * the carrying entry after a crash answers every waiter of the batch: the guarantee that a client waiting across a
 * crash gets the committed outcome holds as before, because the batch commits as one transaction.
 */
export function gatherReplies(owed: Owed[]): Owed[] {
  const carrier = owed.find((o) => o.entry && !onlyReplies(o.entry)) ?? owed.find((o) => o.entry);
  if (!carrier) return owed;
  return owed.map((o) => {
    if (o === carrier || !o.entry || !onlyReplies(o.entry)) return o;
    carrier.entry!.replies.push(...o.entry.replies);
    return { field: '', entry: null, parcels: o.parcels, later: o.later };
  });
}

/**
 * The ids of applied parcels by the subject their sender is acknowledged on, in order: one acknowledgement per sender.
 * Only parcels with an id ask for one (an older worker's).
 */
export function bySender(parcels: readonly Inbound[]): Map<string, string[]> {
  const senders = new Map<string, string[]>();
  for (const { id, ackTo } of parcels) {
    if (id === '') continue;
    let ids = senders.get(ackTo);
    if (!ids) senders.set(ackTo, (ids = []));
    ids.push(id);
  }
  return senders;
}
