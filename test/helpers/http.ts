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
