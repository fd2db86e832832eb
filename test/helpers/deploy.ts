/**
 * Checks of deploy/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-models) and what a reviewer
 * looks for, the Grafana dashboard against the metrics the code exports. Each check returns its problems as
 * sentences (empty: fine), so test/unit/deploy.test.ts can show that every check finds a broken copy.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';
import type { IContainer, IPodTemplateSpec } from 'kubernetes-models/v1';
import { adminPortOf, loadConfig, type Config } from '../../src/config.js';
import { promqlNames } from './promql.js';

/** What every object has; the rest is checked against the schema of its kind. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

export interface Manifest {
  /** file#index, for messages */
  where: string;
  obj: K8sObject;
}

/** Every YAML document under dir except kustomization.yaml, and the file names that kustomization.yaml lists. */
export function loadManifests(dir: string): { manifests: Manifest[]; files: string[]; kustomized: string[] } {
  const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml').sort();
  const manifests: Manifest[] = [];
  for (const file of files) {
    parseAllDocuments(readFileSync(join(dir, file), 'utf8')).forEach((doc, index) => {
      const where = `${file}#${index}`;
      if (doc.errors.length > 0) throw new Error(`${where}: ${doc.errors.map((e) => e.message).join('; ')}`);
      const obj = doc.toJS() as K8sObject | null;
      if (obj === null) return; // an empty document (a trailing ---)
      if (typeof obj.apiVersion !== 'string' || typeof obj.kind !== 'string' || typeof obj.metadata?.name !== 'string') {
        throw new Error(`${where}: not a Kubernetes object (apiVersion, kind and metadata.name are required)`);
      }
      manifests.push({ where: `${where} ${obj.kind}/${obj.metadata.name}`, obj });
    });
  }
  const kustomization = parseAllDocuments(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'))[0]?.toJS() as { resources?: string[] } | undefined;
  return { manifests, files, kustomized: [...(kustomization?.resources ?? [])].sort() };
}

/** Each object constructed as the kubernetes-models class of its apiVersion and kind, and validated. */
export async function schemaProblems(manifests: Manifest[]): Promise<string[]> {
  const problems: string[] = [];
  for (const { where, obj } of manifests) {
    // apiVersion `v1` is kubernetes-models/v1, `apps/v1` is kubernetes-models/apps/v1, and so on.
    if (!/^(?:[a-z0-9.-]+\/)?v\d+(?:(?:alpha|beta)\d+)?$/.test(obj.apiVersion)) {
      problems.push(`${where}: apiVersion ${obj.apiVersion} is not one Kubernetes has`);
      continue;
    }
    let group: Record<string, unknown>;
    try {
      group = (await import(`kubernetes-models/${obj.apiVersion}`)) as Record<string, unknown>;
    } catch {
      problems.push(`${where}: apiVersion ${obj.apiVersion} is unknown to kubernetes-models`);
      continue;
    }
    const Model = group[obj.kind] as (new (data: unknown) => { validate(): void }) & { kind?: string; apiVersion?: string } | undefined;
    if (typeof Model !== 'function' || Model.kind !== obj.kind || Model.apiVersion !== obj.apiVersion) {
      problems.push(`${where}: kind ${obj.kind} is unknown in ${obj.apiVersion}`);
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (err) {
      problems.push(`${where}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/**
 * Fields the schema does not have (a misspelt `readinessProbes` is ignored by the API server, and by
 * kubernetes-models' validate(), which allows extra properties): each object is type-checked as an object literal
 * of kubernetes-models' TypeScript interface of its kind, whose excess-property check names every unknown field.
 * `root` is the package root, where `kubernetes-models` resolves.
 */
export function unknownFieldProblems(manifests: Manifest[], root: string): string[] {
  const file = join(root, '__deploy_manifests_check__.ts');
  const lines: string[] = [];
  const starts: { line: number; where: string }[] = [];
  manifests.forEach(({ where, obj }, n) => {
    starts.push({ line: lines.length, where });
    lines.push(`import type { I${obj.kind} as T${n} } from ${JSON.stringify(`kubernetes-models/${obj.apiVersion}`)};`);
    lines.push(...`export const m${n}: T${n} = ${JSON.stringify(obj, null, 1)};`.split('\n'));
  });
  const source = lines.join('\n');
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, version, ...rest) => (name === file ? ts.createSourceFile(name, source, version) : getSourceFile.call(host, name, version, ...rest));
  host.fileExists = (name) => name === file || fileExists.call(host, name);
  host.readFile = (name) => (name === file ? source : readFile.call(host, name));
  const program = ts.createProgram([file], options, host);
  const problems: string[] = [];
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, ' ');
    if (d.file?.fileName !== file || d.start === undefined) {
      problems.push(`type check of the manifests: ${message}`);
      continue;
    }
    const line = d.file.getLineAndCharacterOfPosition(d.start).line;
    const where = starts.filter((s) => s.line <= line).at(-1)?.where ?? '?';
    problems.push(`${where}: ${message}`);
  }
  return problems;
}

interface Selector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

/** Whether a label selector (or a Service's plain map) picks pods with these labels; an empty one picks none here. */
export function selects(selector: Selector | Record<string, string> | undefined, labels: Record<string, string> = {}): boolean {
  if (!selector) return false;
  const s: Selector = 'matchLabels' in selector || 'matchExpressions' in selector ? (selector as Selector) : { matchLabels: selector as Record<string, string> };
  const plain = Object.entries(s.matchLabels ?? {});
  const expressions = s.matchExpressions ?? [];
  if (plain.length === 0 && expressions.length === 0) return false;
  return (
    plain.every(([k, v]) => labels[k] === v) &&
    expressions.every(({ key, operator, values = [] }) => {
      switch (operator) {
        case 'In': return key in labels && values.includes(labels[key]!);
        case 'NotIn': return !(key in labels) || !values.includes(labels[key]!);
        case 'Exists': return key in labels;
        case 'DoesNotExist': return !(key in labels);
        default: return false;
      }
    })
  );
}

export interface Workload {
  where: string;
  kind: 'Deployment' | 'StatefulSet';
  name: string;
  replicas: number;
  selector: Selector;
  template: IPodTemplateSpec;
  serviceName?: string;
}

export function workloads(manifests: Manifest[]): Workload[] {
  return manifests.flatMap(({ where, obj }) => {
    if (obj.kind !== 'Deployment' && obj.kind !== 'StatefulSet') return [];
    const spec = obj.spec as { replicas?: number; selector: Selector; template: IPodTemplateSpec; serviceName?: string };
    return [{ where, kind: obj.kind, name: obj.metadata.name, replicas: spec.replicas ?? 1, selector: spec.selector, template: spec.template, serviceName: spec.serviceName }];
  });
}

export const containersOf = (w: Workload): IContainer[] => [...(w.template.spec?.initContainers ?? []), ...(w.template.spec?.containers ?? [])];

export function configMaps(manifests: Manifest[]): Map<string, Record<string, string>> {
  return new Map(manifests.filter((m) => m.obj.kind === 'ConfigMap').map((m) => [m.obj.metadata.name, (m.obj.data ?? {}) as Record<string, string>]));
}

/** Names of variables that carry a credential. */
export const SECRET_NAME = /PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|AUTH|API_?KEY|PRIVATE_?KEY/i;

/**
 * Lines of a config file or script that set a credential to a literal instead of a variable ($VAR or $$VAR, as in
 * nats-server configs, shell and compose files). Comment lines are skipped.
 */
export function literalCredentials(text: string): string[] {
  const rules = [
    /\b(?:password|passwd|requirepass|masterauth|token)\b["']?\s*[:=]?\s*["']?([^\s,}"']+)/gi,
    /\bauth-pass\s+\S+\s+["']?([^\s"']+)/gi,
    /^user\s+\S+.*?\s>([^\s]+)/gi,
  ];
  const found: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#')) continue;
    for (const rule of rules) {
      for (const m of line.matchAll(rule)) {
        if (!m[1]!.startsWith('$')) found.push(line);
      }
    }
  }
  return found;
}

/** The environment a container starts with: its ConfigMaps, its literal values, and placeholders for the rest. */
export function environmentOf(c: IContainer, maps: Map<string, Record<string, string>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) Object.assign(env, maps.get(from.configMapRef.name ?? '') ?? {});
  }
  for (const e of c.env ?? []) env[e.name] = e.value ?? (e.valueFrom?.secretKeyRef ? 'from-the-secret' : 'from-the-pod');
  return env;
}

/** The app's containers: image webshop-actors, role from the first argument. */
export function appRole(c: IContainer): 'worker' | 'gateway' | 'other' | undefined {
  const image = (c.image ?? '').split('/').at(-1)!.split(':')[0];
  if (image !== 'webshop-actors') return undefined;
  const role = c.args?.[0] ?? c.command?.[0];
  return role === 'worker' || role === 'gateway' ? role : 'other';
}

/** The container port a probe or Service names, by number or by name. */
function portNumber(containers: IContainer[], port: number | string | undefined): number | undefined {
  if (typeof port === 'number') return containers.some((c) => c.ports?.some((p) => p.containerPort === port)) ? port : undefined;
  for (const c of containers) for (const p of c.ports ?? []) if (p.name === port) return p.containerPort;
  return undefined;
}

export interface ReviewOptions {
  /** The Secret every credential comes from, and its keys. */
  secretName: string;
  secretKeys: ReadonlySet<string>;
}

/** What a reviewer checks in the manifests, beyond the schema. */
export function reviewProblems(manifests: Manifest[], { secretName, secretKeys }: ReviewOptions): string[] {
  const problems: string[] = [];
  const maps = configMaps(manifests);
  const loads = workloads(manifests);
  const labelsOf = (w: Workload) => w.template.metadata?.labels ?? {};

  for (const { where, obj } of manifests) {
    if (obj.kind === 'Secret') problems.push(`${where}: credentials never go into the manifests; the user creates the Secret ${secretName}`);
    if (obj.kind === 'ConfigMap') {
      for (const [key, value] of Object.entries((obj.data ?? {}) as Record<string, string>)) {
        // A file (a key with a dot, e.g. auth.conf: users and permissions) is read line by line below instead.
        if (!key.includes('.') && SECRET_NAME.test(key)) problems.push(`${where}: key ${key} looks like a credential; take it from the Secret ${secretName}`);
        for (const line of literalCredentials(value)) problems.push(`${where}: ${key} sets a credential to a literal (${line}); use a variable filled from the Secret`);
      }
    }
  }

  for (const w of loads) {
    const labels = labelsOf(w);
    if (!selects(w.selector, labels)) problems.push(`${w.where}: its selector does not select its own pod template's labels`);
    const pods = w.template.spec;
    const mounts = new Map<string, string>(); // mount path -> ConfigMap name
    for (const v of pods?.volumes ?? []) {
      if (v.configMap && !maps.has(v.configMap.name ?? '')) problems.push(`${w.where}: volume ${v.name} names ConfigMap ${v.configMap.name}, which no manifest defines`);
    }

    for (const c of containersOf(w)) {
      const at = `${w.where} container ${c.name}`;
      const r = c.resources;
      for (const part of ['requests', 'limits'] as const) {
        for (const what of ['cpu', 'memory']) {
          if (r?.[part]?.[what] === undefined) problems.push(`${at}: no resources.${part}.${what}`);
        }
      }
      for (const m of c.volumeMounts ?? []) {
        const cm = pods?.volumes?.find((v) => v.name === m.name)?.configMap?.name;
        if (cm) mounts.set(m.mountPath.replace(/\/$/, ''), cm);
      }
      // A script or config file given on the command line from a mounted ConfigMap must be a key of it.
      for (const arg of [...(c.command ?? []), ...(c.args ?? [])]) {
        for (const [path, cm] of mounts) {
          if (arg.startsWith(`${path}/`) && !(arg.slice(path.length + 1) in (maps.get(cm) ?? {}))) {
            problems.push(`${at}: ${arg} is not a key of the ConfigMap ${cm} mounted at ${path}`);
          }
        }
      }
      for (const from of c.envFrom ?? []) {
        if (from.secretRef) problems.push(`${at}: envFrom a Secret hands over every key; take the ones it needs with secretKeyRef`);
        if (from.configMapRef && !maps.has(from.configMapRef.name ?? '')) problems.push(`${at}: envFrom names ConfigMap ${from.configMapRef.name}, which no manifest defines`);
      }
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.secretKeyRef;
        if (ref && (ref.name !== secretName || !secretKeys.has(ref.key))) {
          problems.push(`${at}: ${e.name} comes from ${ref.name}/${ref.key}; the credentials are the keys ${[...secretKeys].join(', ')} of the Secret ${secretName}`);
        }
        if (SECRET_NAME.test(e.name) && !ref) problems.push(`${at}: ${e.name} looks like a credential but is not a secretKeyRef to ${secretName}`);
      }

      const role = appRole(c);
      if (role === undefined) continue;
      if (role === 'other') {
        problems.push(`${at}: the app's role (worker or gateway) must be its first argument`);
        continue;
      }
      let config: Config;
      try {
        config = loadConfig(environmentOf(c, maps));
      } catch (err) {
        problems.push(`${at}: its settings do not load: ${(err as Error).message}`);
        continue;
      }
      const admin = adminPortOf(config, role);
      if (config.adminHost !== '0.0.0.0') problems.push(`${at}: SHOP_ADMIN_HOST is ${config.adminHost}; the probes and Prometheus reach the admin port only on 0.0.0.0`);
      if (admin === 0) problems.push(`${at}: SHOP_ADMIN_PORT is 0 (a random port); the probes need a fixed one`);
      if (config.startServers) problems.push(`${at}: SHOP_START_SERVERS must be false: the servers are StatefulSets`);
      for (const [probe, path] of [['readinessProbe', '/readyz'], ['livenessProbe', '/healthz']] as const) {
        const get = c[probe]?.httpGet;
        if (get?.path !== path) problems.push(`${at}: ${probe} must be an HTTP GET of ${path}, got ${JSON.stringify(c[probe] ?? null)}`);
        else if (portNumber([c], get.port) !== admin) problems.push(`${at}: ${probe} asks port ${get.port}, but the ${role} serves admin HTTP on ${admin} (SHOP_ADMIN_PORT and its slot)`);
      }
      const notes = w.template.metadata?.annotations ?? {};
      if (notes['prometheus.io/scrape'] !== 'true' || notes['prometheus.io/port'] !== String(admin)) {
        problems.push(`${w.where}: annotations prometheus.io/scrape "true" and prometheus.io/port "${admin}" (the ${role}'s admin port) are what Prometheus finds it by, got ${JSON.stringify(notes)}`);
      }
      const grace = pods?.terminationGracePeriodSeconds ?? 30;
      const preStopSleep = Number(/^sleep (\d+)$/.exec((c.lifecycle?.preStop?.exec?.command ?? []).join(' '))?.[1] ?? 0);
      if (grace * 1000 <= config.shutdownGraceMs + preStopSleep * 1000) {
        problems.push(`${w.where}: terminationGracePeriodSeconds ${grace} must be above SHOP_SHUTDOWN_GRACE_MS (${config.shutdownGraceMs} ms) plus the preStop pause (${preStopSleep} s), or the kubelet kills it mid-shutdown`);
      }
    }
  }

  for (const { where, obj } of manifests) {
    if (obj.kind === 'PodDisruptionBudget') {
      const spec = obj.spec as { selector?: Selector; minAvailable?: number | string; maxUnavailable?: number | string };
      const covered = loads.filter((w) => selects(spec.selector, labelsOf(w)));
      if (covered.length !== 1) problems.push(`${where}: selects the pods of ${covered.length} workloads (${covered.map((w) => w.name).join(', ') || 'none'}); one each`);
      for (const w of covered) {
        if (typeof spec.minAvailable === 'number' && (spec.minAvailable < 1 || spec.minAvailable >= w.replicas)) {
          problems.push(`${where}: minAvailable ${spec.minAvailable} of ${w.replicas} replicas either protects nothing or blocks every drain`);
        }
        if (typeof spec.maxUnavailable === 'number' && (spec.maxUnavailable < 1 || spec.maxUnavailable >= w.replicas)) {
          problems.push(`${where}: maxUnavailable ${spec.maxUnavailable} of ${w.replicas} replicas either blocks every drain or protects nothing`);
        }
      }
    }
    if (obj.kind === 'Service') {
      const spec = obj.spec as { selector?: Record<string, string>; clusterIP?: string; ports?: { name?: string; port: number; targetPort?: number | string }[] };
      const backends = loads.filter((w) => selects(spec.selector, labelsOf(w)));
      if (backends.length === 0) {
        problems.push(`${where}: its selector ${JSON.stringify(spec.selector ?? null)} selects no workload's pods`);
        continue;
      }
      for (const p of spec.ports ?? []) {
        for (const w of backends) {
          if (portNumber(w.template.spec?.containers ?? [], p.targetPort ?? p.port) === undefined) {
            problems.push(`${where}: port ${p.name ?? p.port} targets ${p.targetPort ?? p.port}, which no container of ${w.name} has`);
          }
        }
      }
    }
  }

  const budgeted = (w: Workload) =>
    manifests.some(({ obj }) => obj.kind === 'PodDisruptionBudget' && selects((obj.spec as { selector?: Selector }).selector, labelsOf(w)));
  for (const w of loads) {
    if (!budgeted(w)) problems.push(`${w.where}: no PodDisruptionBudget selects its pods`);
    if (w.kind !== 'StatefulSet') continue;
    const headless = manifests.find(({ obj }) => obj.kind === 'Service' && obj.metadata.name === w.serviceName)?.obj.spec as { clusterIP?: string; selector?: Record<string, string> } | undefined;
    if (!headless || headless.clusterIP !== 'None' || !selects(headless.selector, labelsOf(w))) {
      problems.push(`${w.where}: serviceName ${w.serviceName} must be a headless Service (clusterIP: None) that selects its pods: the pods' DNS names come from it`);
    }
  }
  return problems;
}

/** Metric name -> its type and label names, from prom-client registries. */
export type MetricCatalogue = Map<string, { type: string; labels: string[] }>;

export interface DashboardOptions {
  metrics: MetricCatalogue;
  /** Labels Prometheus adds to every series (job, instance, and what the scrape configs set). */
  targetLabels: ReadonlySet<string>;
}

interface Panel {
  title?: string;
  type?: string;
  datasource?: { uid?: string; type?: string } | string | null;
  targets?: { expr?: string; legendFormat?: string; datasource?: { uid?: string } | string | null }[];
  panels?: Panel[];
}

const HISTOGRAM_SERIES = /_(bucket|sum|count)$/;

/** Every query of the dashboard names metrics, labels and functions that exist; every panel uses the datasource variable. */
export function dashboardProblems(dashboard: { panels?: Panel[]; templating?: { list?: { name?: string; type?: string; query?: string }[] } }, { metrics, targetLabels }: DashboardOptions): string[] {
  const problems: string[] = [];
  const variable = dashboard.templating?.list?.find((v) => v.type === 'datasource');
  if (variable?.query !== 'prometheus') problems.push('the dashboard has no datasource variable of type prometheus');
  const dsRef = `\${${variable?.name ?? 'datasource'}}`;
  const panels = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== 'row');
  if (panels.length === 0) problems.push('the dashboard has no panels');
  for (const panel of panels) {
    const at = `panel "${panel.title ?? '?'}"`;
    const uid = (d: Panel['datasource']) => (typeof d === 'object' && d !== null ? d.uid : d);
    if (uid(panel.datasource) !== dsRef) problems.push(`${at}: datasource ${JSON.stringify(panel.datasource)}, not the variable ${dsRef}`);
    if (!panel.targets?.length) problems.push(`${at}: no queries`);
    for (const target of panel.targets ?? []) {
      if (target.datasource !== undefined && uid(target.datasource) !== dsRef) problems.push(`${at}: a query's datasource is ${JSON.stringify(target.datasource)}, not ${dsRef}`);
      const expr = target.expr ?? '';
      let names;
      try {
        names = promqlNames(expr);
      } catch (err) {
        problems.push(`${at}: ${(err as Error).message}`);
        continue;
      }
      if (names.selectors.length === 0) problems.push(`${at}: the query ${JSON.stringify(expr)} selects no metric`);
      const available = new Set(targetLabels);
      for (const { metric, labels } of names.selectors) {
        const base = metric.replace(HISTOGRAM_SERIES, '');
        const known = metrics.get(metric);
        const histogram = metrics.get(base);
        let metricLabels: string[];
        if (known && known.type !== 'histogram' && known.type !== 'summary') {
          metricLabels = known.labels;
        } else if (metric !== base && histogram && (histogram.type === 'histogram' || histogram.type === 'summary')) {
          metricLabels = metric.endsWith('_bucket') ? [...histogram.labels, 'le'] : histogram.labels;
        } else if (known) {
          problems.push(`${at}: ${metric} is a ${known.type}; query ${metric}_bucket, _sum or _count`);
          continue;
        } else {
          problems.push(`${at}: metric ${metric} is not exported by the worker or the gateway (src/monitoring/metrics.ts)`);
          continue;
        }
        for (const l of metricLabels) available.add(l);
        for (const l of labels) {
          if (!metricLabels.includes(l) && !targetLabels.has(l)) problems.push(`${at}: ${metric} has no label ${l} (it has ${metricLabels.join(', ') || 'none'})`);
        }
      }
      for (const l of names.grouping) {
        if (!available.has(l)) problems.push(`${at}: groups by ${l}, which none of its metrics has: ${JSON.stringify(expr)}`);
      }
      for (const [, l] of (target.legendFormat ?? '').matchAll(/\{\{\s*([^}\s]+)\s*\}\}/g)) {
        if (!available.has(l!)) problems.push(`${at}: legend {{${l}}} names a label the query does not have`);
      }
    }
  }
  return problems;
}

/** Every metric name of the dashboard's queries (without the histogram suffixes), for the test's coverage check. */
export function dashboardMetrics(dashboard: { panels?: Panel[] }): Set<string> {
  const names = new Set<string>();
  for (const p of (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])])) {
    for (const t of p.targets ?? []) {
      try {
        for (const s of promqlNames(t.expr ?? '').selectors) names.add(s.metric);
      } catch {
        // dashboardProblems reports it
      }
    }
  }
  return names;
}
