import { createHash } from 'node:crypto';

/**
 * JSON with object keys sorted (by UTF-16 code unit) at every level and no whitespace, so the
 * same data always gives the same text whatever its key order or formatting. Object members
 * whose value is `undefined` are left out, as JSON.stringify does. Meant for JSON data (what
 * JSON.parse or a YAML/zod parse produces); digests stored in the database depend on this exact
 * text, so changing it changes every stored digest.
 *
 * Not for workflow code (node:crypto below is for `digestOf`).
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** sha256 (hex) of the canonical JSON of `value`: formatting and key order do not change it. */
export function digestOf(value: unknown): string {
  return createHash('sha256').update(canonicalJson(value)).digest('hex');
}
