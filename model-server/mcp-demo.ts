import type { ChatRequest, Reply } from './reply';

/**
 * How the offline model calls the demo MCP server's tools (mcp-server/, docs/tools.md "MCP
 * servers") under whatever server name an agent lists them (`<server>.lookup_stock`, …), so
 * the MCP demo runs without a real model:
 * - "reserve 2 of SKU-1" → `reserve_stock {sku, quantity}`
 * - "list the reservations" → `list_reservations {}`
 * - "how many SKU-1 are in stock?", "look up SKU-1" → `lookup_stock {sku}`
 * A call is made only for a tool the request offers (the first server's, when several offer it).
 */
export function mcpDemoCall(request: ChatRequest, text: string): Reply | undefined {
  const sku = /\b(sku-\d{1,6})\b/i.exec(text)?.[1]?.toUpperCase();
  const reserve = /\breserve\s+(\d{1,4})\s*(?:x|units?\s+of|of)?\s*(sku-\d{1,6})\b/i.exec(text);
  if (reserve) return call(request, 'reserve_stock', { sku: reserve[2]!.toUpperCase(), quantity: Number(reserve[1]) });
  if (/\b(list|show)\b.*\breservations\b/i.test(text)) return call(request, 'list_reservations', {});
  if (sku && /\b(stock|available|look\s*up|how many)\b/i.test(text)) return call(request, 'lookup_stock', { sku });
  return undefined;
}

function call(request: ChatRequest, tool: string, args: Record<string, unknown>): Reply | undefined {
  if (request.tool_choice === 'none') return undefined;
  // Keel sends `<server>.<tool>` as `<server>__<tool>` (OpenAI function names allow no dots).
  const name = (request.tools ?? []).map((t) => t.function?.name ?? '').find((n) => n.endsWith(`__${tool}`) || n.endsWith(`.${tool}`));
  return name ? { kind: 'tool_calls', calls: [{ name, arguments: JSON.stringify(args) }] } : undefined;
}

