/** Most stream message ids a partition remembers (about 10 MB), see Applied.messages. */
const RECENT_MESSAGES_MAX = 100_000;
/** Parcels remembered as applied, so that a copy sent again is acknowledged without being applied again. */
const SEEN_PARCELS_MAX = 8192;

/** What one partition applied and committed lately, so that a second copy of it is passed (BatchLoop). */
export class Applied {
  /** Parcels applied and committed lately, oldest first (a Set keeps insertion order). */
  private readonly parcels = new Set<string>();
  /**
   * Message ids of the stream messages applied and committed within JetStream's duplicate window, with when (oldest
   * first), at most RECENT_MESSAGES_MAX: a second copy of one is passed (BatchLoop). Not only repeats within a
   * request deadline: a command a node stored while cut off from the others reappeared after the cut healed.
   */
  private readonly messages = new Map<string, number>();

  /** `duplicateWindowMs`: JetStream's duplicate window, how long a message id is remembered. */
  constructor(private readonly duplicateWindowMs: number) {}

  parcel(id: string): boolean {
    return this.parcels.has(id);
  }

  message(id: string): boolean {
    return this.messages.has(id);
  }

  /** A batch committed these parcels and stream messages (by id), at `now`; the oldest beyond the bounds are forgotten. */
  committed(parcelIds: readonly string[], messageIds: readonly string[], now: number): void {
    for (const id of parcelIds) if (id !== '') this.parcels.add(id);
    for (const id of messageIds) this.messages.set(id, now);
    const keepAfter = now - this.duplicateWindowMs;
    for (const [id, at] of this.messages) {
      if (at >= keepAfter && this.messages.size <= RECENT_MESSAGES_MAX) break;
      this.messages.delete(id);
    }
    for (const id of this.parcels) {
      if (this.parcels.size <= SEEN_PARCELS_MAX) break;
      this.parcels.delete(id);
    }
  }
}
