import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import type { Inventory } from './inventory';
import { createDemoServer, registerExtraTool, type DemoOptions } from './server';

const MAX_BODY_BYTES = 1024 * 1024;

/**
 * The demo server over streamable HTTP at `/mcp` (one MCP session per client), and two plain
 * routes for demos and tests: `GET /reservations` (the write tool's effects) and
 * `POST /extra-tool` (adds a tool: connected clients get notifications/tools/list_changed).
 */
export async function startHttp(inventory: Inventory, opts: DemoOptions & { host: string; port: number }): Promise<{ server: http.Server; url: string }> {
  const sessions = new Map<string, { mcp: McpServer; transport: StreamableHTTPServerTransport }>();
  const extras = { enabled: false };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      opts.log({ event: 'error', message: (error as Error).message });
      if (!res.headersSent) json(res, 500, { error: 'internal error' });
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path === '/reservations' && req.method === 'GET') return json(res, 200, { reservations: inventory.list() });
    if (path === '/extra-tool' && req.method === 'POST') {
      if (!extras.enabled) {
        extras.enabled = true;
        for (const { mcp } of sessions.values()) registerExtraTool(mcp, inventory);
      }
      return json(res, 200, { enabled: true, sessions: sessions.size });
    }
    if (path !== '/mcp') return json(res, 404, { error: 'not found' });

    const sessionId = req.headers['mcp-session-id'];
    if (typeof sessionId === 'string') {
      const session = sessions.get(sessionId);
      // The spec's answer to an unknown session: the client starts a new one.
      if (!session) return json(res, 404, { jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
      return session.transport.handleRequest(req, res);
    }
    const body = req.method === 'POST' ? await readJson(req) : undefined;
    if (!isInitializeRequest(body)) return json(res, 400, { jsonrpc: '2.0', error: { code: -32000, message: 'Bad request: no session ID, and not an initialize request' }, id: null });
    const mcp = createDemoServer(inventory, opts, extras);
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => void sessions.set(id, { mcp, transport }),
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    await mcp.connect(transport);
    await transport.handleRequest(req, res, body);
  }

  await new Promise<void>((resolve) => server.listen(opts.port, opts.host, resolve));
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://${opts.host}:${port}/mcp` };
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new Error('request body too large');
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}
