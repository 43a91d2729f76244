import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { AgentConfigError, loadAgentFile, type AgentConfigProblem } from '../../agents/load';
import type { Logger } from '../../config/logger';
import { splitMcpToolName } from '../../contracts/mcp';
import type { ServerStatus } from './discovery';

const Row = z.object({ name: z.string(), kind: z.string(), source: z.string() });

/**
 * Refuses an agents file whose agents list an MCP tool that cannot be resolved: one of a
 * configured server that was never discovered (by any process, ever: stored tools stay usable
 * while their server is down), or one stored for a server the file no longer configures. Each
 * problem names the agent, the server and the tool, and says what the server answered. Run
 * after the first discovery round, before the agents are loaded.
 */
export async function checkMcpTools(
  file: string,
  mcp: { servers: ReadonlyMap<string, unknown>; status(server: string): ServerStatus | undefined },
  db: CommonQueryMethods,
  log: Logger,
): Promise<void> {
  const defs = await loadAgentFile(file);
  const names = [...new Set(defs.flatMap((d) => d.tools))];
  const rows = new Map((await db.any(sql.type(Row)`SELECT name, kind, source FROM tool_catalog WHERE name = ANY(${sql.array(names, 'text')})`)).map((r) => [r.name, r]));
  const problems: AgentConfigProblem[] = [];
  defs.forEach((def, i) =>
    def.tools.forEach((name) => {
      const row = rows.get(name);
      const split = splitMcpToolName(name);
      const problem = (message: string) => problems.push({ field: `agents[${i}].tools`, agent: def.id, message });
      if (row?.kind === 'mcp' && !mcp.servers.has(row.source)) {
        problem(`"${name}" is a tool of the MCP server "${row.source}", which is not in mcpServers`);
        return;
      }
      if (!split || !mcp.servers.has(split.server)) return;
      const status = mcp.status(split.server);
      if (row) {
        if (status?.state === 'up' && !status.offered.includes(split.tool)) {
          log.warn({ agent: def.id, tool: name }, `the MCP server "${split.server}" no longer offers "${split.tool}": calls of it fail until it does`);
        }
        return;
      }
      problem(`"${name}" has never been discovered: ${whyUndiscovered(split.server, split.tool, status)}`);
    }),
  );
  const [first, ...rest] = problems;
  if (first) throw new AgentConfigError(file, [first, ...rest]);
}

function whyUndiscovered(server: string, tool: string, status: ServerStatus | undefined): string {
  // The error names the server (McpUnavailableError, McpConfigurationError).
  if (status?.state === 'down') return `${status.error} (restart once it answers, or remove the tool)`;
  if (status?.state !== 'up') return `the MCP server "${server}" has not answered yet`;
  const unusable = status.unusable.find((u) => u.tool === tool);
  if (unusable) return `the MCP server "${server}" offers it, but its name cannot be used: ${unusable.reason}`;
  const offered = status.offered.length ? status.offered.join(', ') : 'none';
  return `the MCP server "${server}" has no tool "${tool}" (it offers: ${offered})`;
}
