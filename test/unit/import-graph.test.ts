/**
 * The import graph of src/, read with TypeScript's own parser: no import circle, and every arrow between folders
 * is one the folder map allows (docs/architecture.md, Where things are). A new circle, or an arrow that runs the wrong way (the
 * data path importing placement, anything importing admin/), fails here.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import ts from 'typescript';

/** The sources, from dist/test/unit/ where this runs. */
const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src');

/**
 * What each folder may import besides itself; '.' is the top-level files (config, errors, log, protocol, ...).
 * main.ts, the entry point, may import anything; the other top-level files import only each other.
 */
const MAY_IMPORT: Record<string, string[]> = {
  '.': [],
  actors: ['.'],
  transport: ['.'],
  datapath: ['.', 'actors', 'transport'],
  monitoring: ['.', 'datapath'],
  placement: ['.', 'actors', 'transport', 'datapath', 'monitoring'],
  http: ['.', 'transport', 'monitoring'],
  stack: ['.'],
  admin: ['.', 'transport', 'placement', 'stack'],
};

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [join(dir, e.name)] : [],
  );
}

const folderOf = (file: string) => (dirname(relative(SRC, file)) === '.' ? '.' : relative(SRC, file).split('/')[0]!);
const name = (file: string) => relative(SRC, file);

/** Every relative import of each file (static, type-only, re-exports and import()), as source paths. */
function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const file of sources(SRC)) {
    const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    g.set(
      file,
      importedFiles.filter((i) => i.fileName.startsWith('.')).map((i) => resolve(dirname(file), i.fileName).replace(/\.js$/, '.ts')),
    );
  }
  return g;
}

/** The circles of the graph, each as the files along it (depth-first search: a back edge closes one). */
function circles(g: Map<string, string[]>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const path: string[] = [];
  const visit = (f: string) => {
    state.set(f, 'open');
    path.push(f);
    for (const to of g.get(f) ?? []) {
      if (state.get(to) === 'open') found.push([...path.slice(path.indexOf(to)), to]);
      else if (!state.has(to)) visit(to);
    }
    path.pop();
    state.set(f, 'done');
  };
  for (const f of g.keys()) if (!state.has(f)) visit(f);
  return found;
}

t.test('the search finds a circle when there is one', async (t) => {
  t.same(circles(new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]])), [['a', 'b', 'c', 'a']]);
  t.same(circles(new Map([['a', ['b', 'c']], ['b', ['c']], ['c', []]])), []);
});

t.test('src/ has no import circle', async (t) => {
  const g = graph();
  t.ok(g.size > 40, `read ${g.size} files under ${SRC}`);
  const found = circles(g).map((c) => c.map(name).join(' -> '));
  t.same(found, [], 'break the circle: move what both sides need into a file they can both import');
});

t.test('every arrow between folders is one the folder map allows', async (t) => {
  const g = graph();
  const folders = new Set([...g.keys()].map(folderOf));
  t.same([...folders].filter((f) => !(f in MAY_IMPORT)), [], 'a new folder under src/ gets a line in MAY_IMPORT and in the folder map of docs/architecture.md');
  const wrong: string[] = [];
  for (const [file, imports] of g) {
    if (name(file) === 'main.ts') continue;
    for (const to of imports) {
      const from = folderOf(file);
      const into = folderOf(to);
      if (into !== from && !MAY_IMPORT[from]!.includes(into)) wrong.push(`${name(file)} -> ${name(to)}`);
    }
  }
  t.same(wrong, [], 'an arrow the map does not allow: move the shared piece down, or change the map on purpose');
});
