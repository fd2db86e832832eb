/**
 * Reading settings, below the schema of src/config.ts: where config/*.json are and reading them, each setting's
 * environment variable, and the checks that turn a raw value (from JSON, or a string from the environment) into a
 * typed one or a ConfigError that names the setting and its variable.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const here = dirname(fileURLToPath(import.meta.url));
/** config/ at the package root, from both src/ (tsx) and dist/src/ (compiled). */
export function configDir(): string {
  for (const up of ['..', '../..']) {
    const dir = join(here, up, 'config');
    if (existsSync(join(dir, 'default.json'))) return dir;
  }
  throw new ConfigError(`config/default.json not found above ${here}`);
}

/** A config file, parsed; a ConfigError naming the file when it cannot be read or parsed. */
export function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`cannot read ${path}: ${(err as Error).message}`);
  }
}

/** natsUrl -> SHOP_NATS_URL */
export function envName(key: string): string {
  return 'SHOP_' + key.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
}

/** A setting's check: its raw value in, the typed value out, or a ConfigError naming the setting. */
export type Check = (key: string, value: unknown) => unknown;

export const int = (min: number, max = Number.MAX_SAFE_INTEGER): Check => (key, value) => {
  const n = typeof value === 'string' && /^-?\d+$/.test(value.trim()) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(`setting ${key} (${envName(key)}) must be an integer in ${min}..${max}, got ${JSON.stringify(value)}`);
  }
  return n;
};
export const str = (pattern?: RegExp): Check => (key, value) => {
  if (typeof value !== 'string' || (pattern && !pattern.test(value))) {
    throw new ConfigError(`setting ${key} (${envName(key)}) must be a string${pattern ? ` matching ${pattern}` : ''}, got ${JSON.stringify(value)}`);
  }
  return value;
};
export const oneOf = (...allowed: string[]): Check => (key, value) => {
  if (typeof value !== 'string' || !allowed.includes(value)) {
    throw new ConfigError(`setting ${key} (${envName(key)}) must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  }
  return value;
};
export const bool: Check = (key, value) => {
  if (value === true || value === 'true' || value === '1') return true;
  if (value === false || value === 'false' || value === '0') return false;
  throw new ConfigError(`setting ${key} (${envName(key)}) must be true or false, got ${JSON.stringify(value)}`);
};
