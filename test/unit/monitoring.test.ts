/**
 * deploy/monitoring/ checked by Prometheus's own tool: `promtool check rules` on the alert rules, `promtool test
 * rules` on their unit tests (each alert firing, and not firing on the series beside it), `promtool check config` on
 * both Prometheus configs (which load the rules); every alert says what to do and links to its heading in
 * docs/operations.md. Each check is also run on a broken copy, to show that it can fail.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { parse } from 'yaml';
import { findBinary } from '../../src/stack/processes.js';
import { PROMETHEUS_MISSING } from '../../src/stack/monitor.js';
import { alertRules, MONITORING_DIR, ROOT } from '../helpers/prometheus.js';
import { anchors } from '../helpers/markdown.js';

const SPAWN_TIMEOUT_MS = 60_000;

function promtool(): string | undefined {
  try {
    return findBinary('promtool');
  } catch {
    return undefined;
  }
}

/** A scratch copy of deploy/monitoring/, to break. */
function scratch(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'monitoring-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const f of ['alerts.yml', 'alerts.test.yml', 'prometheus.yml', 'prometheus-kubernetes.yml']) copyFileSync(join(MONITORING_DIR, f), join(dir, f));
  return dir;
}

const run = (bin: string, ...args: string[]) => spawnSync(bin, args, { encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS });

t.test('promtool: the alert rules load, and their unit tests pass (each alert firing and not firing)', async (t) => {
  const bin = promtool();
  if (!bin) return t.fail(PROMETHEUS_MISSING);
  const check = run(bin, 'check', 'rules', join(MONITORING_DIR, 'alerts.yml'));
  t.equal(check.status, 0, `promtool check rules: ${check.stdout}${check.stderr}`);
  t.match(check.stdout, new RegExp(`SUCCESS: ${alertRules().length} rules found`));
  const unit = run(bin, 'test', 'rules', join(MONITORING_DIR, 'alerts.test.yml'));
  t.equal(unit.status, 0, `promtool test rules: ${unit.stdout}${unit.stderr}`);

  // Every alert has a unit test that expects it to fire.
  const tests = parse(readFileSync(join(MONITORING_DIR, 'alerts.test.yml'), 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
  const firing = new Set(tests.tests.flatMap((x) => (x.alert_rule_test ?? []).filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
  t.same(alertRules().map((r) => r.alert).filter((a) => !firing.has(a)), [], 'every alert is tested firing');

  const broken = scratch(t);
  const rules = readFileSync(join(broken, 'alerts.yml'), 'utf8');
  writeFileSync(join(broken, 'alerts.yml'), rules.replace('> 0.01', '> 0.5'));
  const fails = run(bin, 'test', 'rules', join(broken, 'alerts.test.yml'));
  t.not(fails.status, 0, 'a 5xx alert that waits for half the requests to fail fails its unit test');
  t.match(fails.stdout + fails.stderr, /alertname: ShopHttp5xx/);
  writeFileSync(join(broken, 'alerts.yml'), rules.replace('shop_partition_trouble) > 0', 'shop_partition_trouble) >'));
  t.not(run(bin, 'check', 'rules', join(broken, 'alerts.yml')).status, 0, 'promtool check rules refuses an expression that does not parse');
});

t.test('promtool: both Prometheus configs are valid and load the rules', async (t) => {
  const bin = promtool();
  if (!bin) return t.fail(PROMETHEUS_MISSING);
  for (const file of ['prometheus.yml', 'prometheus-kubernetes.yml']) {
    const config = parse(readFileSync(join(MONITORING_DIR, file), 'utf8')) as { rule_files?: string[] };
    t.same(config.rule_files, ['alerts.yml'], `${file} loads alerts.yml`);
  }
  const compose = run(bin, 'check', 'config', join(MONITORING_DIR, 'prometheus.yml'));
  t.equal(compose.status, 0, `promtool check config prometheus.yml: ${compose.stdout}${compose.stderr}`);
  t.match(compose.stdout, /SUCCESS: 1 rule files found/);

  // Debian builds Prometheus without Kubernetes service discovery: its promtool checks the rest of the file, with
  // the pod discovery replaced by a static target.
  const dir = scratch(t);
  const k8s = readFileSync(join(dir, 'prometheus-kubernetes.yml'), 'utf8');
  t.match(k8s, /kubernetes_sd_configs:\n {6}- role: pod\n/);
  writeFileSync(join(dir, 'prometheus-kubernetes.yml'), k8s.replace(/kubernetes_sd_configs:\n {6}- role: pod\n/, 'static_configs:\n      - targets: ["pod:9400"]\n'));
  const cluster = run(bin, 'check', 'config', join(dir, 'prometheus-kubernetes.yml'));
  t.equal(cluster.status, 0, `promtool check config prometheus-kubernetes.yml: ${cluster.stdout}${cluster.stderr}`);
  t.match(cluster.stdout, /SUCCESS: 1 rule files found/);

  writeFileSync(join(dir, 'prometheus.yml'), readFileSync(join(dir, 'prometheus.yml'), 'utf8').replace('- alerts.yml', '- alert.yml'));
  const missing = run(bin, 'check', 'config', join(dir, 'prometheus.yml'));
  t.not(missing.status, 0, 'a config naming a rules file that is not there fails');
});

t.test('every alert has a summary that says what to do and a runbook heading in docs/operations.md', async (t) => {
  const headings = (file: string) => anchors(readFileSync(join(ROOT, file), 'utf8'));
  const problems = (rules: ReturnType<typeof alertRules>) =>
    rules.flatMap((r) => {
      const out: string[] = [];
      if (!r.annotations?.summary || r.annotations.summary.length < 40) out.push(`${r.alert}: no summary that says what to do`);
      const [file, hash] = (r.annotations?.runbook ?? '').split('#');
      if (!file || !hash || !existsSync(join(ROOT, file)) || !headings(file).has(hash)) out.push(`${r.alert}: runbook ${r.annotations?.runbook} is no heading of a file in the repository`);
      if (hash !== r.alert.toLowerCase()) out.push(`${r.alert}: runbook heading ${hash} is not the alert's name`);
      if (!['critical', 'warning'].includes(r.labels?.severity ?? '')) out.push(`${r.alert}: severity must be critical or warning`);
      return out;
    });
  const rules = alertRules();
  t.ok(rules.length >= 10, `${rules.length} alerts`);
  t.same(problems(rules), []);
  const broken = structuredClone(rules);
  broken[0]!.annotations!.runbook = 'docs/operations.md#no-such-alert';
  delete broken[1]!.annotations!.summary;
  t.match(problems(broken), [/runbook docs\/operations\.md#no-such-alert is no heading/, /not the alert's name/, /no summary/]);
});
