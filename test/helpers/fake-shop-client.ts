/** A test double of our own ShopClient interface: records every call and answers from a function the test gives. */
import type { Kind } from '../../src/config.js';
import type { Reply } from '../../src/protocol.js';
import type { ShopClient } from '../../src/transport/shop-client.js';

export interface Call {
  op: 'command' | 'query';
  kind: Kind;
  partition: number;
  msg: { k: string; id?: string } & Record<string, unknown>;
}

export type FakeShopClient = ShopClient & { calls: Call[] };

export function fakeShopClient(answer: (call: Call) => Reply | Promise<Reply>): FakeShopClient {
  const calls: Call[] = [];
  let inFlight = 0;
  const call = async (op: Call['op'], kind: Kind, partition: number, msg: unknown) => {
    const c: Call = { op, kind, partition, msg: msg as Call['msg'] };
    calls.push(c);
    inFlight++;
    try {
      return await answer(c);
    } finally {
      inFlight--;
    }
  };
  return {
    id: 'fake',
    calls,
    command: <V>(kind: Kind, partition: number, cmd: unknown, _opts?: { alone?: boolean }) => call('command', kind, partition, cmd) as Promise<Reply<V>>,
    query: <V>(kind: Kind, partition: number, q: unknown) => call('query', kind, partition, q) as Promise<Reply<V>>,
    inFlight: () => inFlight,
    close: async () => {},
  };
}
