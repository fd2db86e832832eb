/**
 * Writes docs/settings.md, the settings reference, from the config schema: the members of `interface Config` in
 * src/config.ts (their doc comments and order), their checks there (the values each accepts), config/default.json
 * (the defaults) and the other config/*.json (the profiles' overrides). `npm run settings-doc` runs it;
 * test/unit/docs.test.ts fails while the committed file differs from what it would write.
 *
 * Reads the TypeScript source with the compiler's parser (typescript is a devDependency): a development tool, never
 * loaded by the app.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { envName } from '../src/config.js';

export const SETTINGS_DOC_PATH = 'docs/settings.md';

/** The repository root, from both scripts/ (source) and dist/scripts/ (compiled). */
export function repoRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ['..', '../..']) {
    const dir = join(here, up);
    if (existsSync(join(dir, 'config', 'default.json')) && existsSync(join(dir, 'src', 'config.ts'))) return dir;
  }
  throw new Error(`no repository root (config/default.json and src/config.ts) above ${here}`);
}

export interface SettingsSources {
  /** The text of src/config.ts. */
  configTs: string;
  /** config/default.json, parsed. */
  defaults: Record<string, unknown>;
  /** Every other config/<name>.json, parsed, by profile name. */
  profiles: Record<string, Record<string, unknown>>;
}

export function readSources(root = repoRoot()): SettingsSources {
  const dir = join(root, 'config');
  const json = (file: string) => JSON.parse(readFileSync(join(dir, file), 'utf8')) as Record<string, unknown>;
  const profiles: Record<string, Record<string, unknown>> = {};
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json') && f !== 'default.json').sort()) {
    profiles[file.slice(0, -'.json'.length)] = json(file);
  }
  return { configTs: readFileSync(join(root, 'src', 'config.ts'), 'utf8'), defaults: json('default.json'), profiles };
}

interface Setting {
  key: string;
  doc: string;
  values: string;
}

const docOf = (node: ts.Node): string =>
  ts
    .getJSDocCommentsAndTags(node)
    .filter(ts.isJSDoc)
    .map((d) => ts.getTextOfJSDocComment(d.comment) ?? '')
    .join('\n')
    .trim();

/** A numeric expression of the source (`100_000`, `1024 * 1024`) as a number. */
function numberOf(node: ts.Expression): number {
  if (ts.isNumericLiteral(node)) return Number(node.text);
  if (ts.isPrefixUnaryExpression(node) && node.operator === ts.SyntaxKind.MinusToken) return -numberOf(node.operand as ts.Expression);
  if (ts.isParenthesizedExpression(node)) return numberOf(node.expression);
  if (ts.isBinaryExpression(node) && node.operatorToken.kind === ts.SyntaxKind.AsteriskToken) return numberOf(node.left) * numberOf(node.right);
  throw new Error(`settings-doc: cannot read the number ${node.getText()} in src/config.ts`);
}

const fmt = (n: number) => n.toLocaleString('en-US');
const code = (s: string) => '`' + s + '`';

/** What a check in `checks` accepts, in words. */
function valuesOf(check: ts.Expression, consts: Map<string, ts.VariableDeclaration>): string {
  if (ts.isCallExpression(check) && ts.isIdentifier(check.expression)) {
    const args = check.arguments;
    switch (check.expression.text) {
      case 'int':
        return args.length > 1 ? `an integer, ${fmt(numberOf(args[0]!))} to ${fmt(numberOf(args[1]!))}` : `an integer, at least ${fmt(numberOf(args[0]!))}`;
      case 'oneOf':
        return 'one of ' + args.map((a) => code((a as ts.StringLiteral).text)).join(', ');
      case 'str': {
        const arg = args[0];
        if (!arg) return 'text';
        if (ts.isRegularExpressionLiteral(arg)) return arg.text === '/.+/' ? 'text, not empty' : `text matching ${code(arg.text)}`;
        if (ts.isIdentifier(arg)) return describeConst(arg.text, consts);
      }
    }
  }
  if (ts.isIdentifier(check)) {
    if (check.text === 'bool') return '`true` or `false` (`1` or `0` in the environment)';
    return describeConst(check.text, consts);
  }
  throw new Error(`settings-doc: cannot describe the check ${check.getText()} in src/config.ts; teach scripts/settings-doc.ts`);
}

function describeConst(name: string, consts: Map<string, ts.VariableDeclaration>): string {
  const decl = consts.get(name);
  const doc = decl && docOf(decl.parent.parent);
  if (!doc) throw new Error(`settings-doc: the check ${name} in src/config.ts has no doc comment saying what it accepts`);
  return doc.replace(/\.$/, '').replace(/^./, (c) => c.toLowerCase());
}

/** The settings in the order of `interface Config`, with their doc comments and accepted values. */
export function readSettings(configTs: string): Setting[] {
  const file = ts.createSourceFile('config.ts', configTs, ts.ScriptTarget.ES2022, true);
  let iface: ts.InterfaceDeclaration | undefined;
  const consts = new Map<string, ts.VariableDeclaration>();
  for (const stmt of file.statements) {
    if (ts.isInterfaceDeclaration(stmt) && stmt.name.text === 'Config') iface = stmt;
    if (ts.isVariableStatement(stmt)) for (const d of stmt.declarationList.declarations) if (ts.isIdentifier(d.name)) consts.set(d.name.text, d);
  }
  if (!iface) throw new Error('settings-doc: no interface Config in src/config.ts');
  const checksInit = consts.get('checks')?.initializer;
  if (!checksInit || !ts.isObjectLiteralExpression(checksInit)) throw new Error('settings-doc: no `checks` object in src/config.ts');
  const checks = new Map<string, ts.Expression>();
  for (const p of checksInit.properties) {
    if (ts.isPropertyAssignment(p)) checks.set(p.name.getText(), p.initializer);
    else if (ts.isShorthandPropertyAssignment(p)) checks.set(p.name.text, p.name);
  }
  const settings: Setting[] = [];
  for (const m of iface.members) {
    if (!ts.isPropertySignature(m)) continue;
    const key = m.name.getText();
    const doc = docOf(m);
    if (!doc) throw new Error(`settings-doc: setting ${key} has no doc comment in interface Config (src/config.ts); every setting needs one`);
    const check = checks.get(key);
    if (!check) throw new Error(`settings-doc: setting ${key} has no entry in checks (src/config.ts)`);
    settings.push({ key, doc, values: valuesOf(check, consts) });
  }
  return settings;
}

function valueText(v: unknown): string {
  if (v === '') return 'empty';
  return code(typeof v === 'string' ? v : JSON.stringify(v));
}

/** GitHub's anchor of a heading that is one code span. */
const anchor = (key: string) => key.toLowerCase();

/** The whole of docs/settings.md. */
export function settingsDoc({ configTs, defaults, profiles }: SettingsSources): string {
  const settings = readSettings(configTs);
  const names = Object.keys(profiles);
  const files: [string, Record<string, unknown>][] = [['config/default.json', defaults], ...names.map((n): [string, Record<string, unknown>] => [`config/${n}.json`, profiles[n]!])];
  for (const [where, values] of files) {
    for (const key of Object.keys(values)) {
      if (!settings.some((s) => s.key === key)) throw new Error(`settings-doc: ${where} sets ${key}, which is no setting of interface Config`);
    }
  }
  const out: string[] = [];
  out.push(
    '# Settings',
    '',
    '<!-- Generated by scripts/settings-doc.ts from src/config.ts and config/*.json: do not edit; run `npm run settings-doc`. -->',
    '',
    'Settings are layered: `config/default.json`, then `config/<SHOP_PROFILE>.json` if `SHOP_PROFILE` is set (e.g.',
    '`SHOP_PROFILE=test` → `config/test.json`), then environment variables named `SHOP_` + the key in UPPER_SNAKE',
    '(`batchMax` → `SHOP_BATCH_MAX`). `loadConfig` (`src/config.ts`) is the only reader of the environment. It fails',
    'fast: an unknown key in a JSON file, a missing key or a bad value stops the process with exit code 2 and a message',
    'naming the setting and its variable (`setting batchMax (SHOP_BATCH_MAX) must be an integer in 1..100000, got',
    '"0"`). The supervisor hands its whole resolved config to every child as `SHOP_*` variables.',
    '',
    `Profiles: ${names.map((n) => code(n) + ` (\`config/${n}.json\`)`).join(', ')}. A profile sets only what it changes.`,
    'The meaning of each setting is its doc comment in `interface Config`; change it there and run `npm run settings-doc`.',
    '',
    '| Setting | Variable | Default | ' + names.map((n) => `In \`${n}\``).join(' | ') + ' |',
    '|---|---|---|' + names.map(() => '---|').join(''),
  );
  for (const s of settings) {
    if (!(s.key in defaults)) throw new Error(`settings-doc: setting ${s.key} has no default in config/default.json`);
    const cells = [`[\`${s.key}\`](#${anchor(s.key)})`, code(envName(s.key)), valueText(defaults[s.key]), ...names.map((n) => (s.key in profiles[n]! ? valueText(profiles[n]![s.key]) : ''))];
    out.push('| ' + cells.join(' | ') + ' |');
  }
  for (const s of settings) {
    out.push('', `## \`${s.key}\``, '');
    const facts = [`Variable ${code(envName(s.key))}`, `default ${valueText(defaults[s.key])}`];
    for (const n of names) if (s.key in profiles[n]!) facts.push(`${n} profile ${valueText(profiles[n]![s.key])}`);
    facts.push(s.values);
    out.push(facts.join(' · ') + '.', '', s.doc);
  }
  return out.join('\n') + '\n';
}

/** `npm run settings-doc`: writes docs/settings.md. */
function main(): void {
  const root = repoRoot();
  const path = join(root, SETTINGS_DOC_PATH);
  const text = settingsDoc(readSources(root));
  const old = existsSync(path) ? readFileSync(path, 'utf8') : '';
  if (old === text) {
    console.log(`${SETTINGS_DOC_PATH} is up to date`);
    return;
  }
  writeFileSync(path, text);
  console.log(`wrote ${SETTINGS_DOC_PATH}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) main();
