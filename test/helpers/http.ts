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
  const item = (await call('POST', '/stock/item/create/5')).body.item_id as string;
  await call('POST', `/stock/add/${item}/${stock}`);
  const user = (await call('POST', '/payment/create_user')).body.user_id as string;
  await call('POST', `/payment/add_funds/${user}/${credit}`);
  const order = (await call('POST', `/orders/create/${user}`)).body.order_id as string;
  await call('POST', `/orders/addItem/${order}/${item}/${quantity}`);
  const state = async () => ({
    stock: (await call('GET', `/stock/find/${item}`)).body.stock as number,
    credit: (await call('GET', `/payment/find_user/${user}`)).body.credit as number,
    paid: (await call('GET', `/orders/find/${order}`)).body.paid as boolean,
  });
  return { order, state };
}
