import type { Kind } from '../config.js';
import { payment } from './payment.js';
import { stock } from './stock.js';
import type { Actor } from './types.js';

export const ACTORS: Partial<Record<Kind, Actor<any, any>>> = { stock, payment };

export function actorOf(kind: Kind): Actor<any, any> {
  const actor = ACTORS[kind];
  if (!actor) throw new Error(`no actor for kind ${kind}`);
  return actor;
}
