/** Markdown as GitHub reads it, for the checks of links and headings (test/unit/docs.test.ts, test/unit/monitoring.test.ts). */

/** The text without its fenced code blocks (a `#` line in a code block is no heading, a `](x)` no link). */
export const withoutCode = (md: string): string => md.replace(/^```[\s\S]*?^```/gm, '');

/** GitHub's anchors of a Markdown file's headings. */
export function anchors(md: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of withoutCode(md).split('\n')) {
    const m = /^#{1,6}\s+(.*)$/.exec(line);
    if (!m) continue;
    const base = m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}
