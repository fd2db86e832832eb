/**
 * What a committed batch owes, decided without I/O: each share's outbox entry and the field it is stored under,
 * the batch's replies gathered into one entry, and the acknowledgements of the parcels it applied, one per sender.
 */
import { emptyEntry, owesNothing, packCommands, type OutboxEntry } from './outbox.js';
import type { Share } from './batch-share.js';
import type { Inbound } from './participant.js';

/** What a partition's share of a batch owes once committed: its outbox entry and the field it is stored under. */
export interface Owed {
  field: string;
  entry: OutboxEntry | null;
}

/** What owedBy reads of a share. */
export type Owing = Pick<Share, 'kind' | 'partition' | 'actor' | 'last' | 'local' | 'replies' | 'dead' | 'sends'>;

/** What a share owes once committed: replies, parcels with ids fixed by the batch, dead letters. */
export function owedBy(share: Owing): Owed {
  const entry = emptyEntry();
  entry.replies = share.replies;
  entry.dead = share.dead;
  const merge = share.actor.mergeOutgoing;
  let i = 0;
  for (const { kind, partition, cmds } of share.sends.values()) {
    for (const data of packCommands(merge ? merge(cmds) : cmds)) entry.parcels.push([kind, partition, `${share.kind}.${share.partition}.${share.last}.${share.local}.${i++}`, data]);
  }
  if (owesNothing(entry)) return { field: '', entry: null };
  return { field: `${share.last}.${share.local}`, entry };
}

const onlyReplies = (e: OutboxEntry) => e.parcels.length === 0 && e.dead.length === 0;

/**
 * The replies of a batch travel in one stored outbox entry, not in one per partition (issue 20: every order
 * partition of a batch wrote an entry of replies and deleted it again, the largest fixed cost of a partition). They go
 * to an entry that is stored anyway (one with parcels or dead letters), else to the first partition's; the other
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
    return { field: '', entry: null };
  });
}

/** The ids of applied parcels by the subject their sender is acknowledged on, in order: one acknowledgement per sender. */
export function bySender(parcels: readonly Inbound[]): Map<string, string[]> {
  const senders = new Map<string, string[]>();
  for (const { id, ackTo } of parcels) {
    let ids = senders.get(ackTo);
    if (!ids) senders.set(ackTo, (ids = []));
    ids.push(id);
  }
  return senders;
}
