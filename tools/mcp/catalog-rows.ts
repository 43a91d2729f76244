import type { Tool as McpTool } from '@modelcontextprotocol/sdk/types.js';
import { mcpToolAllowed, mcpToolName, type McpServerConfig } from '../../contracts/mcp';
import type { CatalogTool, McpToolTarget } from '../../contracts/tools';

/** What a server's tools get when its configuration does not say (KEEL_MCP_TOOL_TIMEOUT_MS, KEEL_MCP_MAX_ATTEMPTS). */
export interface McpToolDefaults {
  toolTimeoutMs: number;
  maxAttempts: number;
}

/** A tool name Keel can store and show the model: MCP's own rule (letters, digits, `_`, `-`, `.`), `server.tool` at most 128 long. */
const TOOL_NAME = /^[A-Za-z0-9_.-]+$/;
const MAX_NAME = 128;

export interface ListedTools {
  /** The tools to store, as catalog rows. */
  rows: CatalogTool[];
  /** Tools the server offers that the allow list leaves out. */
  notAllowed: string[];
  /** Tools whose names Keel cannot use, with why. */
  unusable: { tool: string; reason: string }[];
}

/**
 * The catalog rows for what a server listed. A tool is `read` only when the server marks it
 * `readOnlyHint: true`; every other one is a `write` tool and needs approval unless an agent's
 * policy says otherwise. `idempotent` comes from the configuration alone: the server's
 * `idempotentHint` decides nothing, because re-sending a write on its word could do it twice.
 */
export function catalogRows(server: McpServerConfig, tools: readonly McpTool[], defaults: McpToolDefaults): ListedTools {
  const listed: ListedTools = { rows: [], notAllowed: [], unusable: [] };
  for (const tool of tools) {
    const name = mcpToolName(server.name, tool.name);
    if (!TOOL_NAME.test(tool.name)) {
      listed.unusable.push({ tool: tool.name, reason: 'a name may hold only letters, digits, "_", "-" and "."' });
    } else if (name.length > MAX_NAME) {
      listed.unusable.push({ tool: tool.name, reason: `"${name}" is longer than ${MAX_NAME} characters` });
    } else if (!mcpToolAllowed(server, tool.name)) {
      listed.notAllowed.push(tool.name);
    } else {
      listed.rows.push(rowOf(server, tool, name, defaults));
    }
  }
  return listed;
}

function rowOf(server: McpServerConfig, tool: McpTool, name: string, defaults: McpToolDefaults): CatalogTool {
  const permission = server.readOnly?.includes(tool.name) ? 'read' : 'write';
  const target: McpToolTarget = { server: server.name, tool: tool.name };
  return {
    name,
    kind: 'mcp',
    source: server.name,
    definition: {
      description: tool.description ?? tool.title ?? tool.annotations?.title ?? `The tool "${tool.name}" of the MCP server "${server.name}".`,
      parameters: tool.inputSchema as Record<string, unknown>,
      permission,
      requiresApproval: permission === 'write',
      timeoutMs: server.timeoutMs ?? defaults.toolTimeoutMs,
      maxAttempts: server.maxAttempts ?? defaults.maxAttempts,
      ...(server.idempotent?.includes(tool.name) ? { idempotent: true } : {}),
    },
    target,
  };
}
