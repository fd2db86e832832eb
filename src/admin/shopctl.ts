#!/usr/bin/env node
/**
 * shopctl, the admin CLI: `status` reads the placement and the workers from NATS KV; `move`, `drain` and
 * `rebalance` are requests to the leading controller, which answers once the moves have taken effect.
 * Settings come from config/ and SHOP_* like every other process (natsUrl, streamPrefix, adminToken).
 */
import { Command, InvalidArgumentError } from 'commander';
import { connect, type NatsConnection } from 'nats';
import { ConfigError, KINDS, loadConfig, type Config, type Kind } from '../config.js';
import { adminRequest, type AdminRequest } from '../runtime/controller.js';
import { serverUrls } from '../supervisor.js';
import { formatStatus, readStatus } from './status.js';

interface Globals {
  nats?: string;
  token?: string;
}

function configFrom(globals: Globals): Config {
  const config = loadConfig();
  // The local stack's servers when it starts them (npm start), else the configured ones; --nats wins.
  return { ...config, natsUrl: globals.nats ?? serverUrls(config).natsUrl, adminToken: globals.token ?? config.adminToken };
}

async function withNats<T>(config: Config, fn: (nc: NatsConnection) => Promise<T>): Promise<T> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: config.natsUrl, name: 'shopctl', maxReconnectAttempts: 0 });
  } catch (err) {
    throw new Error(`cannot reach NATS at ${config.natsUrl} (${(err as Error).message}); is the stack running (npm start)? Use --nats <url> or SHOP_NATS_URL for another one`);
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
  .showHelpAfterError();

program
  .command('status')
  .description('live workers, and every partition with its owner, epoch and lag')
  .option('--json', 'print {"workers":[{"id","pid","host","partitions"}],"partitions":[{"kind","partition","owner","epoch","lag"}]}')
  .action(async (opts: { json?: boolean }) => {
    const config = configFrom(program.opts<Globals>());
    // Invalid values in the buckets are left out of the status and named on stderr, so --json stays parseable.
    const detail = await withNats(config, (nc) => readStatus(nc, config, (kind, data) => process.stderr.write(`warning: ${kind} ${JSON.stringify(data)}\n`)));
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

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`shopctl: ${err instanceof ConfigError ? 'config error: ' : ''}${(err as Error).message}\n`);
  process.exit(err instanceof ConfigError ? 2 : 1);
});
