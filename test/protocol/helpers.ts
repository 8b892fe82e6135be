/** Shared test helpers for the protocol codec tests. */

/** Hex string (whitespace and `|` ignored) to bytes. */
export function h(hex: string): Uint8Array {
  const clean = hex.replace(/[\s|]/g, '');
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) throw new Error(`bad hex fixture: ${hex}`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Bytes of an ASCII/UTF-8 string (for the JSON of VERSION fixtures). */
export function ascii(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

export { concat, Rng } from '../helpers.js';
