import type { CommonQueryMethods } from 'slonik';
import type { Logger } from '../../config/logger';
import type { McpServerConfig } from '../../contracts/mcp';
import type { ToolCatalog } from '../catalog';
import { McpConnection } from './connection';
import { ServerDiscovery, type DiscoverySettings, type ServerStatus } from './discovery';
import { mcpExecutor } from './executor';

export { checkMcpTools } from './check';
export { McpConnection } from './connection';

export interface McpServerRuntime {
  config: McpServerConfig;
  connection: McpConnection;
  discovery: ServerDiscovery;
}

/** This process's MCP servers: one connection and one discovery loop each. */
export interface McpRuntime {
  servers: ReadonlyMap<string, McpServerRuntime>;
  /** Settles (never rejects) once every server's first listing succeeded or failed; each is bounded by KEEL_MCP_CONNECT_TIMEOUT_MS. */
  firstRound: Promise<void>;
  status(server: string): ServerStatus | undefined;
  /** Stops discovering and closes every connection (stdio servers' processes end). */
  close(): Promise<void>;
}

/**
 * Connects this process to the configured MCP servers and starts discovering their tools into
 * `catalog` (docs/tools.md, "MCP servers"). With `execute` (workers), the catalog's `mcp`
 * tools become runnable, on the same connections. Nothing here waits for a server.
 */
export function startMcp(opts: {
  servers: readonly McpServerConfig[];
  db: CommonQueryMethods;
  catalog: ToolCatalog;
  settings: { mcp: DiscoverySettings & { connectTimeoutMs: number }; secrets: Readonly<Record<string, string>> };
  log: Logger;
  execute: boolean;
}): McpRuntime {
  const servers = new Map<string, McpServerRuntime>();
  for (const config of opts.servers) {
    const hooks: { discovery?: ServerDiscovery } = {};
    const connection = new McpConnection({
      server: config,
      secrets: opts.settings.secrets,
      connectTimeoutMs: opts.settings.mcp.connectTimeoutMs,
      log: opts.log,
      onToolsChanged: () => {
        opts.log.info({ mcpServer: config.name }, 'MCP server says its tools changed: listing them again');
        void hooks.discovery?.refresh();
      },
      onLost: () => hooks.discovery?.lost(),
    });
    const discovery = new ServerDiscovery(config, connection, { db: opts.db, catalog: opts.catalog, settings: opts.settings.mcp, log: opts.log });
    hooks.discovery = discovery;
    servers.set(config.name, { config, connection, discovery });
  }
  // Before any row is loaded: a row added without its kind's executor is resolvable but not runnable.
  if (opts.execute) opts.catalog.register('mcp', mcpExecutor(servers));
  const firstRound = Promise.all([...servers.values()].map((s) => s.discovery.start())).then(() => undefined);
  return {
    servers,
    firstRound,
    status: (server) => servers.get(server)?.discovery.status,
    async close() {
      for (const s of servers.values()) s.discovery.stop();
      await Promise.all([...servers.values()].map((s) => s.connection.close()));
    },
  };
}
