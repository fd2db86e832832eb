import type { Kind } from '../config.js';
import { order } from './order.js';
import { payment } from './payment.js';
import { stock } from './stock.js';
import type { Actor } from './types.js';

export const ACTORS: Record<Kind, Actor<any, any>> = { stock, payment, order };

export function actorOf(kind: Kind): Actor<any, any> {
  return ACTORS[kind];
}
