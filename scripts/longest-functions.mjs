#!/usr/bin/env node
/**
 * The longest functions under a source folder, by lines (first line of the declaration to its closing brace, nested
 * functions included in their parent's count): a measure of how much logic one closure carries.
 *
 *   node scripts/longest-functions.mjs [dir=src] [count=10]
 *
 * Reads .ts files only (not .d.ts); parses with the TypeScript compiler API, so it needs no build.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

const [dir = 'src', countArg = '10'] = process.argv.slice(2);
const count = Number(countArg);

function* files(path) {
  for (const name of readdirSync(path)) {
    const full = join(path, name);
    if (statSync(full).isDirectory()) yield* files(full);
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) yield full;
  }
}

/** What a function is called where it is written: its own name, or the variable, property or method it is assigned to. */
function nameOf(node) {
  if (node.name && ts.isIdentifier(node.name)) return node.name.text;
  if (node.name) return node.name.getText();
  const parent = node.parent;
  if (parent && ts.isVariableDeclaration(parent) && ts.isIdentifier(parent.name)) return parent.name.text;
  if (parent && ts.isPropertyAssignment(parent)) return parent.name.getText();
  if (ts.isConstructorDeclaration(node)) return 'constructor';
  return '(anonymous)';
}

const found = [];
for (const file of files(dir)) {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const visit = (node) => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const start = source.getLineAndCharacterOfPosition(node.getStart(source)).line;
      const end = source.getLineAndCharacterOfPosition(node.getEnd()).line;
      found.push({ lines: end - start + 1, name: nameOf(node), where: `${relative(process.cwd(), file)}:${start + 1}` });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
}

found.sort((a, b) => b.lines - a.lines || a.where.localeCompare(b.where));
const top = found.slice(0, count);
const width = Math.max(...top.map((f) => f.name.length), 8);
console.log(`${'lines'.padStart(5)}  ${'function'.padEnd(width)}  where`);
for (const f of top) console.log(`${String(f.lines).padStart(5)}  ${f.name.padEnd(width)}  ${f.where}`);
