import { StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ErrorCode, McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { mcpToolAllowed, type McpServerConfig } from '../../contracts/mcp';
import { McpToolTarget, type CatalogTool } from '../../contracts/tools';
import { definitionOf, type CatalogExecutor } from '../catalog';
import { ToolAuthError, ToolInputError, ToolTransientError, type Tool } from '../tool';
import { McpConfigurationError, McpUnavailableError, type McpConnection } from './connection';

/** The longest text of a tool's error result or of a server's refusal that the model reads. */
const MAX_ERROR_TEXT = 2_000;

/**
 * How this process calls catalog tools of kind `mcp`: on the server's pooled connection, with
 * the call's idempotency key as `_meta.idempotencyKey`. Failures, as the activity maps them:
 * - the server cannot be reached, or its HTTP endpoint answers an error status: nothing ran, a
 *   ToolTransientError, retried (`maxAttempts`) and then recorded as TOOL_EXECUTION_ERROR;
 * - the server exits or drops the connection after the call was sent: a McpCallInterruptedError,
 *   retried the same way, but for a write the outcome is unknown (the effect ledger decides);
 * - its HTTP endpoint refuses the deployment's credentials (401, 403): ToolAuthError;
 * - the tool answers `isError: true`, or the server refuses the request (unknown tool, invalid
 *   arguments): a ToolInputError, whose message the model reads;
 * - the configuration cannot call it (server not configured here, tool not allowed, a secret not set): a ToolInputError.
 */
export function mcpExecutor(servers: ReadonlyMap<string, { config: McpServerConfig; connection: McpConnection }>): CatalogExecutor {
  return (row: CatalogTool): Tool<Record<string, unknown>> => {
    const target = McpToolTarget.parse(row.target);
    return {
      definition: definitionOf(row),
      parse(args) {
        if (typeof args !== 'object' || args === null || Array.isArray(args)) throw new ToolInputError('invalid arguments: expected a JSON object');
        return args as Record<string, unknown>;
      },
      async execute(args, ctx) {
        const server = servers.get(target.server);
        if (!server) throw new ToolInputError(`${row.name}: the MCP server "${target.server}" is not configured in this deployment (mcpServers)`);
        if (!mcpToolAllowed(server.config, target.tool)) throw new ToolInputError(`${row.name}: "${target.tool}" is not in the allow list of the MCP server "${target.server}"`);
        let result: CallToolResult;
        try {
          result = await server.connection.callTool(target.tool, args, { idempotencyKey: ctx.idempotencyKey }, ctx.signal);
        } catch (error) {
          // A time-out or a cancel: the activity tells them apart by the signal.
          if (ctx.signal.aborted) throw error;
          throw classify(error, row.name, target.server);
        }
        if (result.isError) throw new ToolInputError(`${row.name} failed: ${clip(textOf(result)) || 'the tool reported an error'}`);
        return resultOf(result);
      },
    };
  };
}

/**
 * The call was sent and then its connection was lost (the server exited or dropped it): whether
 * it acted is unknown. Not a ToolTransientError, so the effect ledger treats a write's outcome
 * as unknown (re-sent only when idempotent); a read is simply retried.
 */
export class McpCallInterruptedError extends Error {
  override readonly name = 'McpCallInterruptedError';
}

/** Failures that prove nothing reached the server: retrying cannot do anything twice. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN']);

function classify(error: unknown, name: string, server: string): Error {
  const message = clip((error as Error).message ?? String(error));
  if (error instanceof McpConfigurationError) return new ToolInputError(message);
  // Connecting failed: the call was never sent.
  if (error instanceof McpUnavailableError) return new ToolTransientError(message, true);
  if (error instanceof StreamableHTTPError) {
    if (error.code === 401 || error.code === 403) return new ToolAuthError(`${name}: the MCP server "${server}" refused the deployment's credentials (${error.code})`);
    // The endpoint answered the request with an error status instead of handling it.
    return new ToolTransientError(`MCP server "${server}": ${message}`);
  }
  if (error instanceof McpError) {
    if (error.code === ErrorCode.ConnectionClosed || error.code === ErrorCode.RequestTimeout) return new McpCallInterruptedError(`MCP server "${server}" stopped answering during the call: ${message}`);
    // The server failed inside without running the tool (a tool's own failure is an isError result).
    if (error.code === ErrorCode.InternalError) return new ToolTransientError(`MCP server "${server}": ${message}`);
    return new ToolInputError(`${name}: the MCP server "${server}" refused the call: ${message}`);
  }
  const code = (error as { cause?: { code?: unknown } }).cause?.code;
  if (typeof code === 'string' && NOT_SENT_CODES.has(code)) return new ToolTransientError(`MCP server "${server}" is unreachable: ${message} (${code})`, true);
  return new McpCallInterruptedError(`MCP server "${server}": ${message}`);
}

/** What the model reads: the tool's structured content when it has some, else its text (other content described, not inlined). */
function resultOf(result: CallToolResult): unknown {
  if (result.structuredContent !== undefined) return result.structuredContent;
  const text = textOf(result);
  const other = result.content.filter((c) => c.type !== 'text').map((c) => ({ type: c.type, ...('mimeType' in c && c.mimeType ? { mimeType: c.mimeType } : {}), ...('uri' in c ? { uri: c.uri } : {}) }));
  return other.length ? { text, content: other } : { text };
}

function textOf(result: CallToolResult): string {
  return result.content
    .filter((c) => c.type === 'text')
    .map((c) => c.text)
    .join('\n');
}

function clip(text: string): string {
  return text.length > MAX_ERROR_TEXT ? `${text.slice(0, MAX_ERROR_TEXT)}…` : text;
}
