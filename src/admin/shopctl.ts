#!/usr/bin/env node
/**
 * shopctl, the admin CLI: `status` reads the placement and the workers from NATS KV; `move`, `drain` and
 * `rebalance` are requests to the leading controller, which answers once the moves have taken effect.
 * Settings come from config/ and SHOP_* like every other process (natsUrl, natsUser, natsPassword, TLS,
 * streamPrefix, adminToken); against the local stack of `npm start` it finds the servers and the admin
 * credentials by itself.
 */
import { Command, InvalidArgumentError } from 'commander';
import type { NatsConnection } from 'nats';
import { ConfigError, KINDS, loadConfig, type Config, type Kind } from '../config.js';
import { connectNats } from '../transport/connect.js';
import { adminRequest, type AdminRequest } from '../placement/admin.js';
import { readLocalCredentials, secretPaths } from '../stack/secrets.js';
import { serverUrls, withServerAuth } from '../stack/supervisor.js';
import { formatStatus, readStatus } from './status.js';
import { DEAD_LETTERS_LIST_MAX, formatDeadLetters, purgeDeadLetters, readDeadLetters } from './dead-letters.js';

interface Globals {
  nats?: string;
  token?: string;
  user?: string;
  password?: string;
}

/** A command gives up on NATS after this many attempts per server (not 0 or 1: see transport/connect.ts). */
const SHOPCTL_RECONNECT_ATTEMPTS = 2;
/** How long shopctl waits for one NATS server to let it in. */
const SHOPCTL_CONNECT_TIMEOUT_MS = 5000;

/** The NATS user shopctl connects as on the local stack. */
const LOCAL_ADMIN_USER = 'admin';

function configFrom(globals: Globals): Config {
  const config = loadConfig();
  // The local stack's servers when it starts them (npm start), else the configured ones; --nats wins.
  const natsUrl = globals.nats ?? serverUrls(config).natsUrl;
  // Credentials: --user/--password, else SHOP_NATS_USER/SHOP_NATS_PASSWORD, else the local stack's admin user.
  let natsUser = globals.user ?? config.natsUser;
  let natsPassword = globals.password ?? (globals.user === undefined ? config.natsPassword : '');
  if (!natsUser && withServerAuth(config) && globals.nats === undefined) {
    const local = readLocalCredentials(config);
    if (local?.nats[LOCAL_ADMIN_USER]) {
      natsUser = LOCAL_ADMIN_USER;
      natsPassword = local.nats[LOCAL_ADMIN_USER];
    }
  }
  return { ...config, natsUrl, natsUser, natsPassword, adminToken: globals.token ?? config.adminToken };
}

async function withNats<T>(config: Config, fn: (nc: NatsConnection) => Promise<T>): Promise<T> {
  let nc: NatsConnection;
  try {
    nc = await connectNats(config, 'shopctl', { maxReconnectAttempts: SHOPCTL_RECONNECT_ATTEMPTS, timeoutMs: SHOPCTL_CONNECT_TIMEOUT_MS });
  } catch (err) {
    const why = (err as Error).message;
    const hint = /authorization/i.test(why)
      ? config.natsUser
        ? `the server refused user ${config.natsUser}; check --user/--password (SHOP_NATS_USER, SHOP_NATS_PASSWORD)`
        : `the server requires credentials: pass --user and --password (or SHOP_NATS_USER, SHOP_NATS_PASSWORD); the local stack's are in ${secretPaths(config).credentials}`
      : 'is the stack running (npm start)? Use --nats <url> or SHOP_NATS_URL for another one';
    throw new Error(`cannot connect to NATS at ${config.natsUrl} (${why}); ${hint}`);
  }
  try {
    return await fn(nc);
  } finally {
    await nc.close();
  }
}

async function request(globals: Globals, req: AdminRequest): Promise<void> {
  const config = configFrom(globals);
  const reply = await withNats(config, (nc) => adminRequest(nc, config, req));
  if (!reply.ok) throw new Error(reply.error);
  process.stdout.write(`${reply.message} (${reply.moves} placement writes, ${reply.ms} ms)\n`);
}

const kindArg = (value: string): Kind => {
  if (!(KINDS as readonly string[]).includes(value)) throw new InvalidArgumentError(`must be one of ${KINDS.join(', ')}`);
  return value as Kind;
};
const partitionArg = (value: string): number => {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('must be a partition number (0, 1, ...)');
  return Number(value);
};

const program = new Command()
  .name('shopctl')
  .description('Admin CLI of the webshop: placement of partitions on workers')
  .option('--nats <url>', 'NATS server (default: the configured one, SHOP_NATS_URL / config/)')
  .option('--token <token>', 'admin token, when the workers have one (SHOP_ADMIN_TOKEN)')
  .option('--user <user>', "NATS user (SHOP_NATS_USER; default on the local stack: its admin user)")
  .option('--password <password>', 'NATS password (SHOP_NATS_PASSWORD is safer: arguments are visible to other users in ps)')
  .showHelpAfterError();

program
  .command('status')
  .description('live workers, and every partition with its owner, epoch and lag')
  .option('--json', 'print {"workers":[{"id","pid","host","partitions"}],"partitions":[{"kind","partition","owner","epoch","lag","state","deadLetters"}]}')
  .action(async (opts: { json?: boolean }) => {
    const config = configFrom(program.opts<Globals>());
    // Invalid values in the buckets are left out of the status and named on stderr, so --json stays parseable.
    const detail = await withNats(config, (nc) => readStatus(nc, config, (kind, data) => process.stderr.write(`warning: ${kind} ${JSON.stringify(data)}\n`), 'this shopctl'));
    // The cluster's partitions are shown, whatever this shopctl's setting; a different setting is named on stderr.
    if (detail.note) process.stderr.write(`shopctl: ${detail.note}\n`);
    process.stdout.write((opts.json ? JSON.stringify(detail.status) : formatStatus(detail)) + '\n');
  });

program
  .command('move')
  .description('move one partition to a worker (and keep it there until `rebalance`)')
  .argument('<kind>', `actor kind: ${KINDS.join(', ')}`, kindArg)
  .argument('<partition>', 'partition number', partitionArg)
  .argument('<worker>', 'worker id, or a unique prefix of it')
  .action((kind: Kind, partition: number, worker: string) => request(program.opts<Globals>(), { op: 'move', kind, partition, worker }));

program
  .command('drain')
  .description('move every partition off a worker; the worker then exits')
  .argument('<worker>', 'worker id, or a unique prefix of it')
  .action((worker: string) => request(program.opts<Globals>(), { op: 'drain', worker }));

program
  .command('rebalance')
  .description('forget manual moves and balance every kind over the live workers with as few moves as possible')
  .action(() => request(program.opts<Globals>(), { op: 'rebalance' }));

program
  .command('dead-letters')
  .description('the messages partitions could not apply (oldest first): partition, reason, and the payload as JSON, or hex when it does not decode; --purge deletes them')
  .option('--kind <kind>', `only those of one kind: ${KINDS.join(', ')}`, kindArg)
  .option('--partition <n>', 'only those of one partition (with --kind)', partitionArg)
  .option('--limit <n>', `most to list (up to ${DEAD_LETTERS_LIST_MAX})`, partitionArg, 100)
  .option('--json', 'print [{"seq","time","subject","partition","command","reason","detail","bytes","json"|"hex"}]')
  .option('--purge', 'delete them (those of --kind / --partition only, when given)')
  .action(async (opts: { kind?: Kind; partition?: number; limit: number; json?: boolean; purge?: boolean }) => {
    if (opts.partition !== undefined && opts.kind === undefined) throw new InvalidArgumentError('--partition needs --kind');
    const config = configFrom(program.opts<Globals>());
    const filter = { ...(opts.kind !== undefined ? { kind: opts.kind } : {}), ...(opts.partition !== undefined ? { partition: opts.partition } : {}) };
    if (opts.purge) {
      const purged = await withNats(config, (nc) => purgeDeadLetters(nc, config, filter));
      process.stdout.write(`purged ${purged} dead letters\n`);
      return;
    }
    const list = await withNats(config, (nc) => readDeadLetters(nc, config, { ...filter, limit: opts.limit }));
    process.stdout.write((opts.json ? JSON.stringify(list) : formatDeadLetters(list)) + '\n');
  });

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`shopctl: ${err instanceof ConfigError ? 'config error: ' : ''}${(err as Error).message}\n`);
  process.exit(err instanceof ConfigError ? 2 : 1);
});
