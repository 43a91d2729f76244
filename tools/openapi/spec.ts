import { parse as parseYaml } from 'yaml';
import { KeelError } from '../../contracts/errors';

/**
 * Reading an OpenAPI document: JSON or YAML text, OpenAPI 3.0 or 3.1 only, and `$ref`s that stay
 * inside the document. Refusals are KeelErrors with the SPEC_* codes (contracts/errors.ts).
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const QUOTED_MAX = 200;
const quoted = (text: string) => JSON.stringify(text.length > QUOTED_MAX ? `${text.slice(0, QUOTED_MAX)}…` : text);

/** The document in `text`: JSON when it parses as JSON, else YAML (a superset of it). */
export function parseSpecText(text: string): unknown {
  const start = text.trimStart()[0];
  if (start === '{' || start === '[') {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      // A YAML flow mapping can start with "{" too.
    }
  }
  try {
    // `yaml` caps alias expansion (maxAliasCount 100), so an alias bomb is an error, not a hang.
    return parseYaml(text, { prettyErrors: false }) as unknown;
  } catch (error) {
    const first = String((error as Error).message).split('\n')[0] ?? '';
    throw new KeelError('SPEC_INVALID', `The spec is neither JSON nor YAML: ${first.slice(0, 300)}`);
  }
}

/** Checks the document is OpenAPI 3.0 or 3.1 with paths; returns its version. */
export function checkVersion(doc: unknown): string {
  if (!isObject(doc)) throw new KeelError('SPEC_INVALID', 'The spec must be a JSON or YAML object');
  if (doc.swagger !== undefined) {
    throw new KeelError('SPEC_UNSUPPORTED_VERSION', `Swagger ${quoted(String(doc.swagger))} is not supported: only OpenAPI 3.0 and 3.1 (convert the spec to OpenAPI 3 first)`);
  }
  const version = doc.openapi;
  if (typeof version !== 'string') throw new KeelError('SPEC_INVALID', 'The spec has no "openapi" version field: it is not an OpenAPI document');
  if (!/^3\.[01]\.\d+(-[0-9A-Za-z.-]+)?$/.test(version)) throw new KeelError('SPEC_UNSUPPORTED_VERSION', `OpenAPI ${quoted(version)} is not supported: only 3.0 and 3.1`);
  if (!isObject(doc.info)) throw new KeelError('SPEC_INVALID', 'The spec has no "info" object');
  if (!isObject(doc.paths) || Object.keys(doc.paths).length === 0) throw new KeelError('SPEC_INVALID', 'The spec has no paths: there is nothing to import');
  return version;
}

function decodePointerToken(token: string): string {
  return decodeURIComponent(token).replace(/~1/g, '/').replace(/~0/g, '~');
}

/** What a local `$ref` (`#/components/schemas/Order`) points at, or undefined. */
export function resolvePointer(doc: Json, ref: string): Json | undefined {
  if (ref === '#') return doc;
  if (!ref.startsWith('#/')) return undefined;
  let node: Json | undefined = doc;
  for (const raw of ref.slice(2).split('/')) {
    let token: string;
    try {
      token = decodePointerToken(raw);
    } catch {
      return undefined;
    }
    if (Array.isArray(node)) node = /^\d+$/.test(token) ? node[Number(token)] : undefined;
    else if (isObject(node)) node = Object.hasOwn(node, token) ? node[token] : undefined;
    else return undefined;
    if (node === undefined) return undefined;
  }
  return node;
}

/**
 * Every `$ref` in the document must point inside it and at something: a ref to another document
 * or URL (SPEC_REMOTE_REF) is never fetched, so the import cannot be made to reach other hosts.
 */
export function checkRefs(doc: Json): void {
  const seen = new Set<object>();
  const stack: Json[] = [doc];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (typeof node !== 'object' || node === null || seen.has(node)) continue;
    seen.add(node);
    if (Array.isArray(node)) {
      stack.push(...node);
      continue;
    }
    const ref = node.$ref;
    if (typeof ref === 'string') {
      if (!ref.startsWith('#')) throw new KeelError('SPEC_REMOTE_REF', `The $ref ${quoted(ref)} points outside the spec: only refs inside it (#/…) are followed, nothing else is fetched`);
      if (resolvePointer(doc, ref) === undefined) throw new KeelError('SPEC_INVALID', `The $ref ${quoted(ref)} points at nothing in the spec`);
    }
    stack.push(...Object.values(node));
  }
}

/** The object behind a (chain of) local `$ref`, for parameters, request bodies and path items. */
export function derefObject(doc: Json, value: Json | undefined): JsonObject | undefined {
  let node = value;
  for (let hops = 0; isObject(node) && typeof node.$ref === 'string'; hops++) {
    if (hops > 20) return undefined;
    node = resolvePointer(doc, node.$ref);
  }
  return isObject(node) ? node : undefined;
}
