import { waitFor } from './servers.js';

/** How long each setup step of oneOrderShop may take, asked again while the answer is a 5xx. */
const SETUP_DEADLINE_MS = 30_000;

/** One HTTP request to the gateway, as a test reads it: status, JSON body (or the raw text), content type, timing. */
export interface HttpAnswer {
  status: number;
  /** The parsed JSON body; the raw text when it is not JSON. */
  body: any;
  contentType: string | null;
  /** performance.now() when the request was sent, and how long it took (ms). */
  at: number;
  ms: number;
}

export async function httpCall(base: string, method: 'GET' | 'POST', path: string): Promise<HttpAnswer> {
  const at = performance.now();
  const res = await fetch(base + path, { method });
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body, contentType: res.headers.get('content-type'), at, ms: performance.now() - at };
}

/** Any function that calls the API and reads the JSON body: httpCall bound to a base, or a test's own. */
export type CallApi = (method: 'GET' | 'POST', path: string) => Promise<{ status: number; body: any }>;

/**
 * An item (price 5) with `stock`, a user with `credit`, and an order of `quantity` of the item, made through the
 * API; `state()` reads back the item's stock, the user's credit and whether the order is paid.
 */
export async function oneOrderShop(call: CallApi, { stock, credit, quantity }: { stock: number; credit: number; quantity: number }) {
  // Each step must succeed before the next uses its result: on a busy machine a partition may still be starting
  // (503); the step is asked again until it is done, within SETUP_DEADLINE_MS (and a refusal is a failed setup).
  const must = async (method: 'GET' | 'POST', path: string) => {
    let last = { status: 0, body: undefined as any };
    await waitFor(async () => (last = await call(method, path)).status < 500, { deadlineMs: SETUP_DEADLINE_MS, what: `${method} ${path} to be answered` });
    if (last.status !== 200) throw new Error(`setup: ${method} ${path} answered ${last.status} ${JSON.stringify(last.body)}`);
    return last.body;
  };
  const item = (await must('POST', '/stock/item/create/5')).item_id as string;
  await must('POST', `/stock/add/${item}/${stock}`);
  const user = (await must('POST', '/payment/create_user')).user_id as string;
  await must('POST', `/payment/add_funds/${user}/${credit}`);
  const order = (await must('POST', `/orders/create/${user}`)).order_id as string;
  await must('POST', `/orders/addItem/${order}/${item}/${quantity}`);
  const state = async () => ({
    stock: (await call('GET', `/stock/find/${item}`)).body.stock as number,
    credit: (await call('GET', `/payment/find_user/${user}`)).body.credit as number,
    paid: (await call('GET', `/orders/find/${order}`)).body.paid as boolean,
  });
  return { order, state };
}
