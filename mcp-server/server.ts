import { setTimeout as sleep } from 'node:timers/promises';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { Inventory, InventoryError } from './inventory';

export interface DemoOptions {
  /** Every tool call waits this long first (a slow warehouse, for the tests of a server dying mid-call). */
  delayMs: number;
  /** Each tool call, as one line for the operator (stderr: stdout is the stdio transport's). */
  log: (entry: Record<string, unknown>) => void;
}

/** Extra tools an operator turned on while the server runs (`POST /extra-tool` over HTTP): clients are told their list changed. */
export const EXTRA_TOOL = 'warehouse_status';

/**
 * Keel's demo MCP server (docs/tools.md, "MCP servers"): a small warehouse with one read tool,
 * `lookup_stock`, one write tool, `reserve_stock`, whose effect is recorded once per
 * `_meta.idempotencyKey`, and `list_reservations` to read those effects back.
 */
export function createDemoServer(inventory: Inventory, opts: DemoOptions, extras: { enabled: boolean }): McpServer {
  const server = new McpServer({ name: 'keel-demo-inventory', version: '1.0.0' }, { capabilities: { tools: { listChanged: true } } });

  const run = async (tool: string, meta: Record<string, unknown> | undefined, fn: () => object): Promise<CallToolResult> => {
    const idempotencyKey = typeof meta?.idempotencyKey === 'string' ? meta.idempotencyKey : null;
    opts.log({ event: 'call', tool, idempotencyKey });
    if (opts.delayMs > 0) await sleep(opts.delayMs);
    try {
      const result = fn() as Record<string, unknown>;
      return { content: [{ type: 'text', text: JSON.stringify(result) }], structuredContent: result };
    } catch (error) {
      if (!(error instanceof InventoryError)) throw error;
      return { content: [{ type: 'text', text: error.message }], isError: true };
    }
  };

  server.registerTool(
    'lookup_stock',
    {
      description: 'How many units of a product (by SKU, e.g. "SKU-1") are available to reserve, and its name.',
      inputSchema: { sku: z.string().min(1).max(32).describe('The product SKU, e.g. SKU-1') },
      annotations: { readOnlyHint: true },
    },
    ({ sku }, extra) => run('lookup_stock', extra._meta, () => inventory.lookup(sku)),
  );

  server.registerTool(
    'reserve_stock',
    {
      description: 'Reserves units of a product for the customer. Sending the same request again (same idempotency key) reserves nothing more.',
      inputSchema: { sku: z.string().min(1).max(32), quantity: z.number().int().min(1).max(1_000) },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true },
    },
    ({ sku, quantity }, extra) =>
      run('reserve_stock', extra._meta, () => inventory.reserve(sku, quantity, typeof extra._meta?.idempotencyKey === 'string' ? extra._meta.idempotencyKey : null)),
  );

  server.registerTool(
    'list_reservations',
    { description: 'Every reservation made so far, oldest first.', inputSchema: {}, annotations: { readOnlyHint: true } },
    (_args, extra) => run('list_reservations', extra._meta, () => ({ reservations: inventory.list() })),
  );

  if (extras.enabled) registerExtraTool(server, inventory);
  return server;
}

/** The tool `POST /extra-tool` turns on: registering it on a connected server sends notifications/tools/list_changed. */
export function registerExtraTool(server: McpServer, inventory: Inventory): void {
  server.registerTool(
    EXTRA_TOOL,
    { description: 'Units in stock and reserved, for every product.', inputSchema: {}, annotations: { readOnlyHint: true } },
    () => {
      const reservations = inventory.list();
      const result = { reservations: reservations.length };
      return { content: [{ type: 'text', text: JSON.stringify(result) }], structuredContent: result };
    },
  );
}
