import { KeelError } from '../../contracts/errors';
import type { ParsedOperation, SkippedOperation } from '../../contracts/openapi';
import type { HttpOperationTarget } from '../../contracts/tools';
import { compileArguments, RESERVED_HEADERS } from '../http-operation';
import { toJsonSchema, withoutPatterns } from './schema';
import { derefObject, isObject, type Json, type JsonObject } from './spec';

/**
 * The operations of a checked spec (spec.ts), each as what its tool is generated from: the
 * server URL, the parameters and the JSON Schema of the tool's arguments. Operations a tool
 * cannot call are left out with the reason (skipped).
 */

const METHODS = ['get', 'head', 'post', 'put', 'patch', 'delete'] as const;
type Method = HttpOperationTarget['method'];
const JSON_MEDIA = /^application\/(?:[\w.+-]*\+)?json\s*(?:;|$)/i;
const MAX_TEXT = 2_000;

export interface ParseOptions {
  /** Where the spec was fetched from: relative server URLs are resolved against it. */
  sourceUrl?: string | undefined;
  /** The import's server URL, used instead of the spec's. */
  serverUrl?: string | undefined;
  /** The import's auth header: never a parameter of a tool. */
  authHeader?: string | undefined;
  maxOperations: number;
}

export interface ParsedSpec {
  title: string;
  operations: ParsedOperation[];
  skipped: SkippedOperation[];
}

class Skip extends Error {}

function textOf(value: Json | undefined): string | null {
  return typeof value === 'string' && value.trim() !== '' ? value.trim().slice(0, MAX_TEXT) : null;
}

/** A server object's URL with its variables' defaults filled in, absolute (against the spec's URL), or undefined. */
function serverUrlOf(server: Json | undefined, sourceUrl: string | undefined): string | undefined {
  if (!isObject(server) || typeof server.url !== 'string') return undefined;
  const variables = isObject(server.variables) ? server.variables : {};
  const filled = server.url.replace(/\{([^}]+)\}/g, (_m, name: string) => {
    const variable = variables[name];
    return isObject(variable) && typeof variable.default === 'string' ? variable.default : '';
  });
  try {
    const url = new URL(filled, sourceUrl);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href.replace(/\/+$/, '') : undefined;
  } catch {
    return undefined;
  }
}

function firstServer(servers: Json | undefined): Json | undefined {
  return Array.isArray(servers) ? servers[0] : undefined;
}

/** Made from the method and path when the spec gives no operationId: `get_orders_orderId`. */
function derivedOperationId(method: string, path: string): string {
  const words = path.replace(/[{}]/g, '').split(/[^A-Za-z0-9]+/).filter(Boolean);
  return [method, ...words].join('_');
}

interface Param {
  name: string;
  in: 'path' | 'query' | 'header';
  required: boolean;
  description: string | null;
  schema: JsonObject;
}

function parametersOf(doc: Json, pathItem: JsonObject, operation: JsonObject, authHeader: string | undefined): Param[] {
  const byKey = new Map<string, JsonObject>();
  for (const list of [pathItem.parameters, operation.parameters]) {
    if (!Array.isArray(list)) continue;
    for (const raw of list) {
      const param = derefObject(doc, raw);
      if (param && typeof param.name === 'string' && typeof param.in === 'string') byKey.set(`${param.in}:${param.name}`, param);
    }
  }
  const params: Param[] = [];
  for (const param of byKey.values()) {
    const name = param.name as string;
    const where = param.in as string;
    const required = where === 'path' || param.required === true;
    const reserved = where === 'header' && (RESERVED_HEADERS.has(name.toLowerCase()) || name.toLowerCase() === authHeader?.toLowerCase());
    if (where === 'cookie' || reserved) {
      if (required) throw new Skip(`its required ${where} parameter "${name}" cannot be sent by a tool${reserved ? ' (credentials come from the import\'s authSecret)' : ''}`);
      continue;
    }
    if (where !== 'path' && where !== 'query' && where !== 'header') throw new Skip(`parameter "${name}" is in "${where}"`);
    let schema = param.schema;
    if (schema === undefined && isObject(param.content)) schema = Object.values(param.content).map((media) => (isObject(media) ? media.schema : undefined)).find((s) => s !== undefined);
    params.push({ name, in: where, required, description: textOf(param.description), schema: toJsonSchema(doc, schema ?? { type: 'string' }) });
  }
  return params;
}

function bodyOf(doc: Json, operation: JsonObject): { required: boolean; description: string | null; schema: JsonObject } | undefined {
  const body = derefObject(doc, operation.requestBody);
  if (!body) return undefined;
  const required = body.required === true;
  const content = isObject(body.content) ? body.content : {};
  const media = Object.entries(content).find(([type]) => JSON_MEDIA.test(type));
  if (!media) {
    if (required) throw new Skip(`its request body is not JSON (${Object.keys(content).join(', ') || 'no content type'})`);
    return undefined;
  }
  const mediaObject = isObject(media[1]) ? media[1] : {};
  return { required, description: textOf(body.description), schema: toJsonSchema(doc, mediaObject.schema ?? {}) };
}

/** The tool's arguments: one property per parameter, `body` for the request body. */
function argumentsSchema(params: Param[], body: ReturnType<typeof bodyOf>): JsonObject {
  const properties: JsonObject = {};
  const required: string[] = [];
  for (const p of params) {
    if (Object.hasOwn(properties, p.name)) throw new Skip(`two parameters are named "${p.name}"`);
    properties[p.name] = p.description ? { ...p.schema, description: p.description } : p.schema;
    if (p.required) required.push(p.name);
  }
  if (body) {
    if (Object.hasOwn(properties, 'body')) throw new Skip('a parameter is named "body", the name of the request body');
    properties.body = body.description ? { ...body.schema, description: body.description } : body.schema;
    if (body.required) required.push('body');
  }
  return { type: 'object', properties, ...(required.length > 0 ? { required } : {}), additionalProperties: false };
}

/** The schema as ajv compiles it: as is, else without its patterns and formats, else the operation is skipped. */
function compilable(schema: JsonObject): JsonObject {
  try {
    compileArguments(schema);
    return schema;
  } catch {
    const plain = withoutPatterns(schema) as JsonObject;
    try {
      compileArguments(plain);
      return plain;
    } catch (error) {
      throw new Skip(`its parameters are not a usable JSON Schema (${(error as Error).message.slice(0, 200)})`);
    }
  }
}

export function parseOperations(doc: JsonObject, options: ParseOptions): ParsedSpec {
  const info = isObject(doc.info) ? doc.info : {};
  const title = textOf(info.title) ?? 'api';
  const paths = isObject(doc.paths) ? doc.paths : {};
  const operations: ParsedOperation[] = [];
  const skipped: SkippedOperation[] = [];
  const ids = new Set<string>();
  let count = 0;
  for (const [path, rawItem] of Object.entries(paths)) {
    const pathItem = derefObject(doc, rawItem);
    if (!pathItem || !path.startsWith('/')) continue;
    for (const method of METHODS) {
      const operation = pathItem[method];
      if (!isObject(operation)) continue;
      if (++count > options.maxOperations) throw new KeelError('SPEC_TOO_LARGE', `The spec has more than ${options.maxOperations} operations (KEEL_OPENAPI_MAX_OPERATIONS)`);
      const upper = method.toUpperCase() as Method;
      let operationId = textOf(operation.operationId)?.slice(0, 200) ?? derivedOperationId(method, path);
      for (let n = 2; ids.has(operationId); n++) operationId = `${textOf(operation.operationId) ?? derivedOperationId(method, path)}_${n}`;
      ids.add(operationId);
      try {
        const serverUrl =
          options.serverUrl ??
          serverUrlOf(firstServer(operation.servers), options.sourceUrl) ??
          serverUrlOf(firstServer(pathItem.servers), options.sourceUrl) ??
          serverUrlOf(firstServer(doc.servers), options.sourceUrl);
        if (!serverUrl) throw new Skip('the spec names no absolute http(s) server URL for it: give the import a serverUrl');
        // Credentials go to the import's one server: an operation the spec sends elsewhere is left out, not given them.
        const main = options.serverUrl ?? serverUrlOf(firstServer(doc.servers), options.sourceUrl);
        if (options.authHeader !== undefined && main !== undefined && new URL(serverUrl).origin !== new URL(main).origin) {
          throw new Skip(`the spec sends it to ${new URL(serverUrl).origin}, not the import's server ${new URL(main).origin}: the credentials are not sent there (give the import a serverUrl to call one server)`);
        }
        const params = parametersOf(doc, pathItem, operation, options.authHeader);
        const body = method === 'get' || method === 'head' ? undefined : bodyOf(doc, operation);
        const schema = compilable(argumentsSchema(params, body));
        for (const name of path.match(/\{([^}]+)\}/g) ?? []) {
          if (!params.some((p) => p.in === 'path' && `{${p.name}}` === name)) throw new Skip(`its path names ${name}, which no parameter describes`);
        }
        const descriptions = Object.fromEntries(params.filter((p) => p.description).map((p) => [p.name, p.description!]));
        operations.push({
          operationId,
          method: upper,
          path,
          summary: textOf(operation.summary),
          description: textOf(operation.description),
          tags: Array.isArray(operation.tags) ? operation.tags.filter((t): t is string => typeof t === 'string').slice(0, 10) : [],
          serverUrl,
          parameters: params.map((p) => ({ name: p.name, in: p.in, required: p.required })),
          ...(body ? { body: { required: body.required } } : {}),
          argumentsSchema: schema,
          parameterDescriptions: descriptions,
        });
      } catch (error) {
        if (!(error instanceof Skip)) throw error;
        skipped.push({ operationId, method: upper, path, reason: error.message });
      }
    }
  }
  if (operations.length === 0) {
    const why = skipped[0] ? `: ${skipped[0].method} ${skipped[0].path} was left out because ${skipped[0].reason}` : '';
    throw new KeelError('SPEC_INVALID', `The spec has no operation a tool can call${why}`);
  }
  return { title, operations, skipped };
}
