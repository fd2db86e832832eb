/**
 * The commands every actor kind takes, as schemas: one source for their TypeScript types (`Static<>`) and for the
 * check a partition runs on every message before an actor sees it (`checkCommand`). A message that fails it is a
 * dead letter (datapath/batch-loop.ts), never a reason to stop the partition.
 *
 * Two doors, each with its own commands: clients (gateways, through the kind's stream) send `client` commands;
 * other partitions send `saga` commands (the checkout's holds, releases, forgets and answers). A saga command that
 * arrives through the clients' door is refused like any other invalid message, so a client cannot forge one.
 */
import { Type, type Static, type TObject } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { KINDS, type Kind } from '../config.js';
import { ERRORS } from '../errors.js';
import { BATCH_INIT_CHUNK } from '../partitioning.js';
import { ID_MAX_CHARS } from '../protocol.js';

/** Most lines in one order (keeps every saga message well inside one NATS message). */
export const ORDER_LINES_MAX = 1000;
/** A saga id is `<order id>#<command number>`. */
const SAGA_ID_MAX_CHARS = ID_MAX_CHARS + 24;
/** Longest free text a saga answer carries back (a refusal's detail). */
const DETAIL_MAX_CHARS = 512;
/** Most sagas one forget names: the forgets of one coordinator batch to one participant, merged. */
export const FORGET_SAGAS_MAX = 65_536;

const Id = Type.String({ minLength: 1, maxLength: ID_MAX_CHARS });
const SagaId = Type.String({ minLength: 1, maxLength: SAGA_ID_MAX_CHARS });
/** Amounts, prices, quantities: integers in 0..2^53-1. */
const Count = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
/** A command number (`ApplyContext.seq`): negative for commands delivered within a worker. */
const Seq = Type.Integer({ minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER });
const PartitionNo = Type.Integer({ minimum: 0, maximum: 4095 });
const Range = { from: Count, to: Count };

const cmd = <K extends string, P extends Record<string, Parameters<typeof Type.Object>[0][string]>>(k: K, props: P) =>
  Type.Object({ k: Type.Literal(k), ...props }, { additionalProperties: false });

/** Fields every coordinator -> participant message carries, so the answer finds its way back. */
const SagaRef = { saga: SagaId, order: Id, from: PartitionNo };

export const ReserveSchema = cmd('reserve', { ...SagaRef, lines: Type.Array(Type.Tuple([Id, Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })]), { maxItems: ORDER_LINES_MAX }) });
export const DebitSchema = cmd('debit', { ...SagaRef, user: Id, amount: Count });
/** Give back what the saga holds; with `at`, only the hold made at that command number. */
export const ReleaseSchema = cmd('release', { ...SagaRef, at: Type.Optional(Seq) });
/** These sagas have ended: drop each one's ledger entry, if it is still the one made at its `at`. */
export const ForgetSchema = cmd('forget', { sagas: Type.Array(Type.Tuple([SagaId, Seq]), { maxItems: FORGET_SAGAS_MAX }) });

const ErrorCodeSchema = Type.Union(Object.keys(ERRORS).map((code) => Type.Literal(code as keyof typeof ERRORS)));
const PartName = Type.String({ pattern: `^(${KINDS.join('|')}):\\d{1,4}$`, maxLength: 16 });
export const AnswerSchema = cmd('answer', {
  saga: SagaId,
  order: Id,
  part: PartName,
  phase: Type.Union([Type.Literal('hold'), Type.Literal('release')]),
  ok: Type.Boolean(),
  at: Seq,
  code: Type.Optional(ErrorCodeSchema),
  detail: Type.Optional(Type.String({ maxLength: DETAIL_MAX_CHARS })),
});

const STOCK_CLIENT = [
  cmd('create', { id: Id, price: Count }),
  cmd('batchInit', { ...Range, stock: Count, price: Count }),
  cmd('add', { id: Id, amount: Count }),
  cmd('subtract', { id: Id, amount: Count }),
] as const;
const PAYMENT_CLIENT = [
  cmd('create', { id: Id }),
  cmd('batchInit', { ...Range, credit: Count }),
  cmd('addFunds', { id: Id, amount: Count }),
  cmd('pay', { id: Id, amount: Count }),
] as const;
const ORDER_CLIENT = [
  cmd('create', { id: Id, user: Id }),
  cmd('batchInit', { ...Range, nItems: Count, nUsers: Count, price: Count, seed: Type.Integer({ minimum: 0, maximum: 2 ** 32 - 1 }) }),
  cmd('addItem', { id: Id, item: Id, quantity: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }), price: Count }),
  cmd('checkout', { id: Id }),
] as const;

type Union<T extends readonly TObject[]> = Static<T[number]>;
export type ReserveCmd = Static<typeof ReserveSchema>;
export type DebitCmd = Static<typeof DebitSchema>;
export type ReleaseCmd = Static<typeof ReleaseSchema>;
export type ForgetCmd = Static<typeof ForgetSchema>;
export type SagaAnswer = Static<typeof AnswerSchema>;
export type StockCmd = Union<typeof STOCK_CLIENT> | ReserveCmd | ReleaseCmd | ForgetCmd;
export type PaymentCmd = Union<typeof PAYMENT_CLIENT> | DebitCmd | ReleaseCmd | ForgetCmd;
export type OrderCmd = Union<typeof ORDER_CLIENT> | SagaAnswer;

/** Where a command came from: a client, through the kind's stream; or another partition (a saga message). */
export type Door = 'client' | 'saga';

const SCHEMAS: Record<Kind, Record<Door, readonly TObject[]>> = {
  stock: { client: STOCK_CLIENT, saga: [ReserveSchema, ReleaseSchema, ForgetSchema] },
  payment: { client: PAYMENT_CLIENT, saga: [DebitSchema, ReleaseSchema, ForgetSchema] },
  order: { client: ORDER_CLIENT, saga: [AnswerSchema] },
};

/** Compiled checks by kind, door and command name: a lookup on `k`, then one compiled check (no union search). */
const CHECKS = new Map<string, TypeCheck<TObject>>();
for (const kind of KINDS) {
  for (const door of ['client', 'saga'] as const) {
    for (const schema of SCHEMAS[kind][door]) CHECKS.set(`${kind}.${door}.${(schema.properties.k as unknown as { const: string }).const}`, TypeCompiler.Compile(schema));
  }
}

/** Why a message is not a command an actor may see. */
export type Refusal = { reason: 'unknown_kind' | 'invalid'; detail: string };

/**
 * The command if `value` is one that `kind` takes through `door`, else why not: `unknown_kind` when it names no
 * command of that kind and door, `invalid` when it does but breaks the command's schema (the first error's path).
 */
export function checkCommand(kind: Kind, door: Door, value: unknown): { ok: true } | ({ ok: false } & Refusal) {
  const k = typeof value === 'object' && value !== null ? (value as { k?: unknown }).k : undefined;
  const check = typeof k === 'string' ? CHECKS.get(`${kind}.${door}.${k}`) : undefined;
  if (!check) return { ok: false, reason: 'unknown_kind', detail: `not a ${kind} ${door} command (k: ${describe(k)})` };
  if (check.Check(value)) {
    const { from, to } = value as { from?: number; to?: number };
    if (k !== 'batchInit' || (from! <= to! && to! - from! <= BATCH_INIT_CHUNK)) return { ok: true };
    return { ok: false, reason: 'invalid', detail: `batchInit: the range [${from}, ${to}) is not 0..${BATCH_INIT_CHUNK} ids long` };
  }
  const first = check.Errors(value).First();
  return { ok: false, reason: 'invalid', detail: first ? `${k}${first.path}: ${first.message}` : `${k}: does not match its schema` };
}

/** A value in an error message: its JSON, cut short. */
export function describe(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = `(a ${typeof value} that has no JSON)`; // a BigInt, a cycle, an object without a prototype
  }
  return text.length > 40 ? text.slice(0, 40) + '…' : text;
}
