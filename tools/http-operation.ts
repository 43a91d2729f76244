import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { HttpOperationTarget, type CatalogTool } from '../contracts/tools';
import { definitionOf, type CatalogExecutor } from './catalog';
import { CLIENT_OWNED_HEADERS, guardedFetch, type LookupAll } from './guarded-fetch';
import { throwForHttpStatus } from './http-failures';
import { DEFAULT_TOOL_SETTINGS, ToolAuthError, ToolInputError, type Tool } from './tool';

/**
 * The executor of catalog tools of kind `http` (docs/tools.md, "OpenAPI import"): one operation
 * of an imported API. The model's arguments are checked against the tool's JSON Schema, then
 * put into the request (path parameters URL-encoded into the template, query, headers, a JSON
 * `body`); every request carries `Idempotency-Key: <ctx.idempotencyKey>` and, when the import
 * named one, the auth header from its secret setting. It goes through guarded-fetch (the SSRF
 * rules, KEEL_HTTP_ALLOW_HOSTS), and the status is classified by http-failures.
 */

/**
 * One validator for every generated schema. The schemas are built from specs: unknown keywords
 * and formats are ignored (strict: false, no format checks) rather than refused; the service
 * checks formats itself.
 */
const ajv = new Ajv({ allErrors: true, strict: false, validateFormats: false });
const MAX_PROBLEMS = 10;
const HEADER_VALUE = /^[^\u0000-\u0008\u000a-\u001f\u007f]*$/;
/** The longest a generated tool's socket may stay open; the call's own time-out (its policy) ends it first. */
const OPERATION_SOCKET_LIMIT_MS = 600_000;

/**
 * Header parameters an operation may not have: framing and routing belong to the client, and
 * credentials come from the secret setting only. The import leaves them out of the tool.
 */
export const RESERVED_HEADERS: ReadonlySet<string> = new Set([...CLIENT_OWNED_HEADERS, 'content-type', 'accept', 'authorization', 'cookie', 'idempotency-key']);

/** Compiles a tool's argument schema; throws (with ajv's reason) when it is not a schema ajv accepts. */
export function compileArguments(schema: Record<string, unknown>): ValidateFunction {
  return ajv.compile(schema);
}

function problemsOf(errors: ErrorObject[] | null | undefined): string {
  const lines = (errors ?? []).slice(0, MAX_PROBLEMS).map((e) => {
    const where = e.instancePath ? e.instancePath.slice(1).replace(/\//g, '.') : '';
    const extra = e.keyword === 'additionalProperties' ? ` (${String((e.params as { additionalProperty?: unknown }).additionalProperty)})` : '';
    return `${where ? `${where}: ` : ''}${e.message ?? 'is invalid'}${extra}`;
  });
  return lines.join('; ') || 'do not match the schema';
}

type Args = Record<string, unknown>;

function text(value: unknown): string {
  return typeof value === 'string' ? value : typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value);
}

/** The request the arguments make: URL (path filled, query added) and headers. */
function buildRequest(target: HttpOperationTarget, args: Args): { url: string; headers: Record<string, string> } {
  let path = target.path;
  const query = new URLSearchParams();
  const headers: Record<string, string> = {};
  for (const param of target.parameters) {
    const value = args[param.name];
    if (value === undefined || value === null) continue;
    if (param.in === 'path') {
      const encoded = Array.isArray(value) ? value.map((v) => encodeURIComponent(text(v))).join(',') : encodeURIComponent(text(value));
      // A dot segment would move the request to another path of the service.
      if (encoded === '' || encoded === '.' || encoded === '..') throw new ToolInputError(`${param.name}: "${encoded}" is not a usable path segment`);
      path = path.split(`{${param.name}}`).join(encoded);
    } else if (param.in === 'query') {
      for (const v of Array.isArray(value) ? value : [value]) query.append(param.name, text(v));
    } else {
      if (RESERVED_HEADERS.has(param.name.toLowerCase())) continue;
      const headerValue = Array.isArray(value) ? value.map(text).join(',') : text(value);
      if (!HEADER_VALUE.test(headerValue)) throw new ToolInputError(`${param.name}: a header value cannot contain control characters`);
      headers[param.name.toLowerCase()] = headerValue;
    }
  }
  const base = target.serverUrl.replace(/\/+$/, '');
  const search = query.toString();
  return { url: `${base}${path}${search ? `?${search}` : ''}`, headers };
}

function resultBody(body: string, contentType: string | undefined, truncated: boolean): unknown {
  if (truncated || !contentType || !/[/+]json\b/i.test(contentType)) return body;
  try {
    return JSON.parse(body) as unknown;
  } catch {
    return body;
  }
}

export function createHttpOperationExecutor(deps: { secrets: Readonly<Record<string, string>>; lookup?: LookupAll }): CatalogExecutor {
  return (row: CatalogTool): Tool<Args> => {
    const target = HttpOperationTarget.parse(row.target);
    const definition = definitionOf(row);
    let validate: ValidateFunction | undefined;
    return {
      definition,
      parse(args) {
        if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new ToolInputError('invalid arguments: must be an object');
        try {
          validate ??= compileArguments(row.definition.parameters);
        } catch (error) {
          throw new ToolInputError(`the arguments of ${row.name} cannot be checked: its parameter schema is invalid (${(error as Error).message})`);
        }
        if (!validate(args)) throw new ToolInputError(`invalid arguments: ${problemsOf(validate.errors)}`);
        return args as Args;
      },
      async execute(args, ctx) {
        const { url, headers } = buildRequest(target, args);
        headers.accept = 'application/json';
        headers['idempotency-key'] = ctx.idempotencyKey;
        if (target.auth) {
          const secret = Object.hasOwn(deps.secrets, target.auth.secret) ? deps.secrets[target.auth.secret] : undefined;
          if (!secret) throw new ToolAuthError(`${row.name} needs credentials: the setting KEEL_SECRET_${target.auth.secret} is not set on this worker`);
          headers[target.auth.header.toLowerCase()] = secret;
        }
        const body = args.body === undefined || !target.body ? undefined : JSON.stringify(args.body);
        if (body !== undefined) headers['content-type'] = 'application/json';
        const answer = await guardedFetch({
          url,
          method: target.method,
          headers,
          ...(body === undefined ? {} : { body }),
          allowHosts: ctx.settings.httpAllowHosts,
          // The call's resolved time-out (an agent's toolPolicy may raise it) is ctx.signal's; this only bounds a stuck socket.
          timeoutMs: OPERATION_SOCKET_LIMIT_MS,
          // Never followed: a redirect elsewhere would carry the credentials header, and a write it answers has acted.
          maxRedirects: 0,
          maxBytes: ctx.settings.httpMaxBytes > 0 ? ctx.settings.httpMaxBytes : DEFAULT_TOOL_SETTINGS.httpMaxBytes,
          signal: ctx.signal,
          userAgent: 'keel-openapi-tool/1',
          ...(deps.lookup ? { lookup: deps.lookup } : {}),
        });
        const answered = new URL(answer.url);
        throwForHttpStatus(answer.status, `${target.method} ${answered.origin}${answered.pathname}`, answer.body);
        const contentType = answer.headers['content-type'];
        return { status: answer.status, body: resultBody(answer.body, contentType, answer.truncated), truncated: answer.truncated };
      },
    };
  };
}
