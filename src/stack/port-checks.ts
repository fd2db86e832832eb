/**
 * The supervisor's port checks before it starts anything: every port the servers take is a fixed one, inside the
 * range, taken once (pure), and free on this machine now (else a message naming the setting, and the pid of a
 * previous run's server when its pid file names one that still runs).
 */
import { existsSync, readFileSync } from 'node:fs';
import { ConfigError, envName, type Config } from '../config.js';
import type { DataPaths } from './plan.js';
import { pidAlive } from './processes.js';
import { portIsFree } from './probes.js';
import { portsFrom } from './topology.js';

/** A port a server takes, and the setting it comes from. */
export interface PortUse {
  port: number;
  key: keyof Config;
}

/** Every port the servers of the local stack take: the NATS clients' and routes', the Redis servers' and Sentinels'. */
export function serverPorts(config: Config, p: DataPaths): PortUse[] {
  const uses = (ports: number[], key: keyof Config) => ports.map((port) => ({ port, key }));
  return [
    ...uses(p.nats.map((n) => n.port), 'natsPort'),
    ...(config.natsNodes > 1 ? uses(portsFrom(config.natsClusterPort, config.natsNodes), 'natsClusterPort') : []),
    ...uses(p.redis.map((r) => r.port), 'redisPort'),
    ...uses(p.sentinels.map((s) => s.port), 'sentinelPort'),
  ];
}

/** Throws a ConfigError naming the setting when a port is 0 (the servers need fixed ones), past 65535, or taken twice. */
export function checkServerPorts(ports: PortUse[]): void {
  for (const { port, key } of ports) {
    if (port === 0) throw new ConfigError(`setting ${key} (${envName(key)}) must be a fixed port when startServers is true, got 0`);
    if (port > 65535) throw new ConfigError(`setting ${key} (${envName(key)}) leaves no port for all its nodes (${port} > 65535); choose a lower one`);
  }
  const taken = new Map<number, keyof Config>();
  for (const { port, key } of ports) {
    const other = taken.get(port);
    if (other) {
      throw new ConfigError(
        other === key
          ? `setting ${key} (${envName(key)}) gives port ${port} twice`
          : `settings ${other} and ${key} (${envName(other)}, ${envName(key)}) overlap: both use port ${port} (nodes take consecutive ports from each base)`,
      );
    }
    taken.set(port, key);
  }
}

/** Throws a ConfigError saying what to do when something listens on host:port already. */
export async function assertPortFree(port: number, key: keyof Config, what: string, host = '127.0.0.1', pidFile?: string): Promise<void> {
  if (await portIsFree(port, host)) return;
  let hint = '';
  if (pidFile && existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) hint = ` ${pidFile} names pid ${pid}, which is still running: a previous run's ${what}? Stop it with \`kill ${pid}\`.`;
  }
  throw new ConfigError(
    `port ${port} for ${what} (setting ${key}, ${envName(key)}) is already in use on ${host}.${hint} ` +
      `Stop what listens there (\`ss -ltnp 'sport = :${port}'\` shows it) or choose another port with ${envName(key)}=<port>.`,
  );
}
