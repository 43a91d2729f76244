import type { CommonQueryMethods } from 'slonik';
import type { Logger } from '../../config/logger';
import type { McpServerConfig } from '../../contracts/mcp';
import { upsertCatalogTool, type ToolCatalog } from '../catalog';
import { catalogRows, type McpToolDefaults } from './catalog-rows';
import type { McpConnection } from './connection';

export interface DiscoverySettings extends McpToolDefaults {
  refreshMs: number;
  retryMaxMs: number;
}

/** What this process last learnt of a server. */
export type ServerStatus =
  | { state: 'pending' }
  | { state: 'up'; at: Date; offered: string[]; notAllowed: string[]; unusable: { tool: string; reason: string }[] }
  | { state: 'down'; at: Date; error: string };

const FIRST_RETRY_MS = 1_000;

/**
 * Keeps one server's tools in the catalog: lists them now, again every `refreshMs` and whenever
 * the server says they changed, stores them (tool_catalog) and reloads them into this process.
 * A server that is down is tried again in the background, 1 s after the failure and then
 * doubling up to `retryMaxMs`; only the API's start waits, for the first listing (McpRuntime.firstRound).
 */
export class ServerDiscovery {
  status: ServerStatus = { state: 'pending' };
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | null = null;
  private again = false;
  private failures = 0;
  private losses = 0;
  private lastLoss = 0;
  private stopped = false;

  constructor(
    private readonly config: McpServerConfig,
    private readonly connection: McpConnection,
    private readonly deps: { db: CommonQueryMethods; catalog: ToolCatalog; settings: DiscoverySettings; log: Logger },
  ) {}

  /** Starts discovering; resolves (never rejects) once the first listing succeeded or failed. */
  start(): Promise<void> {
    return this.refresh();
  }

  /** Lists the tools now (after the listing in progress, when one is). */
  refresh(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = this.discover().finally(() => {
      this.running = null;
      if (this.again && !this.stopped) {
        this.again = false;
        void this.refresh();
      }
    });
    return this.running;
  }

  /**
   * The connection was lost: list again soon (which reconnects, so the server's list-changed
   * notifications reach this process again), backing off while it stays down.
   */
  lost(): void {
    if (this.stopped || this.running) return;
    // A server that keeps exiting right after it answers is listed less and less often too.
    this.losses = Date.now() - this.lastLoss > this.deps.settings.retryMaxMs ? 1 : this.losses + 1;
    this.lastLoss = Date.now();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.refresh(), Math.min(this.deps.settings.retryMaxMs, FIRST_RETRY_MS * 2 ** Math.min(this.failures + this.losses - 1, 20))).unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async discover(): Promise<void> {
    clearTimeout(this.timer);
    const { db, catalog, settings, log } = this.deps;
    const server = this.config.name;
    let next: number;
    try {
      const tools = await this.connection.listTools();
      const listed = catalogRows(this.config, tools, settings);
      await db.transaction(async (tx) => {
        for (const row of listed.rows) await upsertCatalogTool(tx, row);
      });
      await catalog.reloadSource(server);
      const before = this.status.state === 'up' ? this.status.offered.join(',') : undefined;
      this.status = { state: 'up', at: new Date(), offered: tools.map((t) => t.name), notAllowed: listed.notAllowed, unusable: listed.unusable };
      if (before !== this.status.offered.join(',')) {
        log.info({ mcpServer: server, tools: listed.rows.map((r) => r.name), notAllowed: listed.notAllowed, unusable: listed.unusable }, 'MCP tools discovered');
      }
      this.failures = 0;
      next = this.config.refreshMs ?? settings.refreshMs;
    } catch (error) {
      this.failures += 1;
      this.status = { state: 'down', at: new Date(), error: (error as Error).message };
      next = Math.min(settings.retryMaxMs, FIRST_RETRY_MS * 2 ** Math.min(this.failures - 1, 20));
      log.warn({ mcpServer: server, error: (error as Error).message, retryInMs: next }, 'MCP tool discovery failed: tools already known stay usable; trying again in the background');
    }
    if (!this.stopped) this.timer = setTimeout(() => void this.refresh(), next).unref();
  }
}
