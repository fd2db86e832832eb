/**
 * The one error table: every stable code that crosses a process boundary or reaches a client,
 * with its HTTP status and a message that says what to do. Actors return codes as values;
 * the gateway turns a code into a response in exactly one place (errorResponse).
 */
export const ERRORS = {
  not_found: { status: 400, message: 'No such id. Create it first (or check the id you were given).' },
  bad_number: { status: 400, message: 'A number in the path must be a base-10 integer from 0 to 9007199254740991.' },
  bad_quantity: { status: 400, message: 'Quantity must be at least 1.' },
  overflow: { status: 400, message: 'The result would exceed 9007199254740991; use a smaller amount.' },
  insufficient_stock: { status: 400, message: 'Not enough stock; nothing was taken. Add stock or order less.' },
  insufficient_credit: { status: 400, message: 'Not enough credit; nothing was charged. Add funds or order less.' },
  order_paid: { status: 400, message: 'The order is paid and can no longer change.' },
  checkout_in_progress: { status: 400, message: 'A checkout of this order is running; wait for its outcome before changing it.' },
  order_full: { status: 400, message: 'The order has the most lines an order may have (1000); check it out, or start another order.' },
  invalid_command: { status: 400, message: 'The partition refused the command as malformed (a client or gateway bug); it was recorded as a dead letter and changed nothing.' },
  checkout_aborted: { status: 400, message: 'The checkout was cancelled before this part of it ran; check out again.' },
  too_large: {
    status: 400,
    message: 'The request asks for more than one request may do; ask for less (split it into several requests), or raise the limit the detail names on every gateway.',
  },
  bad_request: { status: 400, message: 'The request is not one this server understands (a malformed or unknown query); check that client and server run the same version.' },
  route_not_found: { status: 404, message: 'No such route. See docs/api.md for the routes this server answers.' },
  method_not_allowed: { status: 405, message: 'This route exists but not for this method. See docs/api.md.' },
  elsewhere: {
    status: 503,
    message: 'The command reached a worker that does not own its partition (it moved meanwhile), and changed nothing there; the gateway sends it on to the partition itself, so a client should never see this. Retry.',
  },
  unavailable: { status: 503, message: 'The owner of this key did not answer in time; the request may still take effect. Retry later.' },
  internal: { status: 500, message: 'Internal error; the request was not applied. This is a bug: please report it with the server log.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

/** A failure with a stable code; thrown for transport problems, carried as a value for business outcomes. */
export class ShopError extends Error {
  override name = 'ShopError';
  constructor(
    readonly code: ErrorCode,
    readonly detail?: string,
  ) {
    super(detail ? `${ERRORS[code].message} (${detail})` : ERRORS[code].message);
  }
}

export interface ErrorBody {
  error: ErrorCode;
  message: string;
}

export function errorResponse(code: ErrorCode, detail?: string): { status: number; body: ErrorBody } {
  const { status, message } = ERRORS[code];
  return { status, body: { error: code, message: detail ? `${message} (${detail})` : message } };
}
