/**
 * A small strict JSON reader/writer for the VERSION capability string (internal).
 *
 * Why not JSON.parse: integers above 2^53 (e.g. a `pgsizes` mask with high bits) must
 * survive exactly, so integer literals outside the safe range are returned as bigint, and
 * the writer prints bigint as a plain JSON integer. Nesting depth is capped so hostile input
 * cannot exhaust the stack. Every failure is ProtocolError('VFU_BAD_VERSION').
 */
import { ProtocolError } from './errors.js';

const MAX_DEPTH = 32;

function fail(msg: string, at: number): never {
  throw new ProtocolError('VFU_BAD_VERSION', `capability JSON: ${msg} at offset ${at}`);
}

/** Assigns without ever invoking the __proto__ setter. */
export function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

export function parseJson(text: string): unknown {
  let i = 0;
  const n = text.length;

  const ws = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };

  const str = (): string => {
    // text[i] === '"'
    i++;
    let out = '';
    let start = i;
    while (true) {
      if (i >= n) fail('unterminated string', i);
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(start, i);
        i++;
        return out;
      }
      if (c < 0x20) fail('control character in string', i);
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(start, i);
      if (i + 1 >= n) fail('unterminated escape', i);
      const e = text[i + 1];
      i += 2;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const h = text.slice(i, i + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('bad \\u escape', i);
          out += String.fromCharCode(parseInt(h, 16));
          i += 4;
          break;
        }
        default:
          fail('bad escape', i - 1);
      }
      start = i;
    }
  };

  const num = (): number | bigint => {
    const m = /^-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (!m) fail('bad number', i);
    i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const v = Number(m[0]);
      return Number.isSafeInteger(v) ? v : BigInt(m[0]);
    }
    return Number(m[0]);
  };

  const value = (depth: number): unknown => {
    ws();
    if (i >= n) fail('unexpected end', i);
    const c = text[i];
    if (c === '{') {
      if (depth >= MAX_DEPTH) fail('nesting too deep', i);
      i++;
      const obj: Record<string, unknown> = {};
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      while (true) {
        ws();
        if (text[i] !== '"') fail('expected key', i);
        const k = str();
        ws();
        if (text[i] !== ':') fail("expected ':'", i);
        i++;
        setOwn(obj, k, value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail("expected ',' or '}'", i);
      }
    }
    if (c === '[') {
      if (depth >= MAX_DEPTH) fail('nesting too deep', i);
      i++;
      const arr: unknown[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      while (true) {
        arr.push(value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail("expected ',' or ']'", i);
      }
    }
    if (c === '"') return str();
    if (text.startsWith('true', i)) {
      i += 4;
      return true;
    }
    if (text.startsWith('false', i)) {
      i += 5;
      return false;
    }
    if (text.startsWith('null', i)) {
      i += 4;
      return null;
    }
    return num();
  };

  const v = value(0);
  ws();
  if (i !== n) fail('trailing characters', i);
  return v;
}

/** Serialises plain JSON data plus bigint (as an integer literal). Undefined members are skipped. */
export function stringifyJson(v: unknown, depth = 0): string {
  if (depth > MAX_DEPTH) throw new ProtocolError('VFU_BAD_VALUE', 'capability JSON nests too deep');
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(v)) throw new ProtocolError('VFU_BAD_VALUE', `capability value ${v} is not representable in JSON`);
      return JSON.stringify(v);
    case 'bigint':
      return v.toString();
    case 'string':
      return JSON.stringify(v);
    case 'object': {
      if (Array.isArray(v)) return `[${v.map((x) => stringifyJson(x === undefined ? null : x, depth + 1)).join(',')}]`;
      const parts: string[] = [];
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
        if (x === undefined) continue;
        parts.push(`${JSON.stringify(k)}:${stringifyJson(x, depth + 1)}`);
      }
      return `{${parts.join(',')}}`;
    }
    default:
      throw new ProtocolError('VFU_BAD_VALUE', `capability value of type ${typeof v} is not representable in JSON`);
  }
}
