import { z } from 'zod';
import { SECRET_NAME_PATTERN } from './tools';

/**
 * MCP servers an agents file connects to (its top-level `mcpServers:`, docs/tools.md "MCP
 * servers"). Their tools are discovered, stored in the tool catalog as `<server>.<tool>`, and
 * listed by agents like built-in tools.
 */

/** A server's name: the prefix of its tools' names, so it holds no `.`. */
export const MCP_SERVER_NAME_PATTERN = /^[a-zA-Z0-9_-]{1,64}$/;
/** Headers the MCP transport owns: a configured header may not replace them. */
export const MCP_RESERVED_HEADERS: readonly string[] = ['host', 'content-type', 'content-length', 'accept', 'connection', 'transfer-encoding', 'mcp-session-id', 'mcp-protocol-version', 'last-event-id'];

const secretName = z.string().regex(SECRET_NAME_PATTERN, 'must name a secret setting: capitals, digits and "_" (KEEL_SECRET_<NAME>)');
const toolNames = z.array(z.string().min(1).max(128)).max(1_000);

const common = {
  name: z.string().regex(MCP_SERVER_NAME_PATTERN, 'must be 1 to 64 letters, digits, "_" or "-"'),
  /** Only these of the server's tools are stored and callable; unset: all of them. */
  allow: toolNames.optional(),
  /** These tools may be sent twice with one idempotency key and take effect once (the server's own hints are not trusted for this). */
  idempotent: toolNames.optional(),
  /**
   * These tools only read: they run without approval and outside the effect ledger. Every other
   * tool is a write. The server's own `readOnlyHint` is not trusted for this (a server could make
   * a write skip its approval).
   */
  readOnly: toolNames.optional(),
  /** How often the tools are listed again; unset: KEEL_MCP_REFRESH_MS. */
  refreshMs: z.number().int().min(1_000).optional(),
  /** Time-out of one call of any of its tools (an agent's toolPolicy.timeoutMs wins); unset: KEEL_MCP_TOOL_TIMEOUT_MS. */
  timeoutMs: z.number().int().positive().optional(),
  /** Attempts of one call when the server is unreachable or drops it; unset: KEEL_MCP_MAX_ATTEMPTS. */
  maxAttempts: z.number().int().min(1).max(10).optional(),
};

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'must be an environment variable name');

/** A server Keel runs as a child process and talks to over its stdin and stdout. */
export const McpStdioServer = z
  .object({
    ...common,
    transport: z.literal('stdio'),
    command: z.string().min(1),
    args: z.array(z.string()).optional(),
    /** Literal variables for the child (it gets only these, the secret ones and HOME, PATH, SHELL, TERM, USER, LOGNAME). */
    env: z.record(envName, z.string()).optional(),
    /** Variables whose values are secret settings: `{GITHUB_TOKEN: GITHUB}` passes KEEL_SECRET_GITHUB as GITHUB_TOKEN. */
    secretEnv: z.record(envName, secretName).optional(),
  })
  .strict();
export type McpStdioServer = z.infer<typeof McpStdioServer>;

/** A server reached over streamable HTTP. */
export const McpHttpServer = z
  .object({
    ...common,
    transport: z.literal('http'),
    url: z
      .string()
      .url()
      .refine((u) => /^https?:$/.test(new URL(u).protocol), 'must be an http or https URL'),
    /** Header name to secret name: `{Authorization: INVENTORY_TOKEN}` sends KEEL_SECRET_INVENTORY_TOKEN as is. Values are never written here. */
    headers: z
      .record(
        z
          .string()
          .regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, 'must be an HTTP header name')
          .refine((h) => !MCP_RESERVED_HEADERS.includes(h.toLowerCase()), 'is set by the MCP transport'),
        secretName,
      )
      .optional(),
  })
  .strict();
export type McpHttpServer = z.infer<typeof McpHttpServer>;

export const McpServerConfig = z.discriminatedUnion('transport', [McpStdioServer, McpHttpServer]);
export type McpServerConfig = z.infer<typeof McpServerConfig>;

export const McpServers = z
  .array(McpServerConfig)
  .max(50)
  .superRefine((servers, ctx) => {
    const names = servers.map((s) => s.name);
    names.forEach((name, i) => {
      const first = names.indexOf(name);
      if (first !== i) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate MCP server name "${name}" (first at mcpServers[${first}])` });
    });
  });

/** The catalog name of a server's tool, as agents list it. */
export function mcpToolName(server: string, tool: string): string {
  return `${server}.${tool}`;
}

/** `server.tool` split at its first `.` (server names hold none); undefined for a name without one. */
export function splitMcpToolName(name: string): { server: string; tool: string } | undefined {
  const dot = name.indexOf('.');
  if (dot <= 0 || dot === name.length - 1) return undefined;
  return { server: name.slice(0, dot), tool: name.slice(dot + 1) };
}

/** Whether a server's configuration lets its tool be stored and called. */
export function mcpToolAllowed(server: Pick<McpServerConfig, 'allow'>, tool: string): boolean {
  return server.allow === undefined || server.allow.includes(tool);
}
