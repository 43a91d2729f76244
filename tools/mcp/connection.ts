import readline from 'node:readline';
import type { Readable } from 'node:stream';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import { ToolListChangedNotificationSchema, type CallToolResult, type Tool as McpTool } from '@modelcontextprotocol/sdk/types.js';
import type { Logger } from '../../config/logger';
import type { McpServerConfig } from '../../contracts/mcp';

const CLIENT_INFO = { name: 'keel', version: '0.1.0' };
/** setTimeout's largest delay: a call's own signal (its policy's time-out) is what ends it. */
const NO_SDK_TIMEOUT_MS = 2_147_483_647;
/** The longest stderr line of a stdio server that is logged. */
const MAX_STDERR_LINE = 2_000;

/** The server could not be reached (not started, refused, exited, answered the handshake badly, or took too long). */
/** Pages of tools one listing reads at most (a server's allow list is at most 1,000 names). */
const MAX_TOOL_PAGES = 100;

export class McpUnavailableError extends Error {
  override readonly name = 'McpUnavailableError';
}

/** The deployment's configuration cannot reach the server (a secret it names is not set): retrying will not help. */
export class McpConfigurationError extends Error {
  override readonly name = 'McpConfigurationError';
}

interface Live {
  client: Client;
  transport: Transport;
}

export interface McpConnectionOptions {
  server: McpServerConfig;
  /** Secret settings by name (KEEL_SECRET_<NAME>). */
  secrets: Readonly<Record<string, string>>;
  connectTimeoutMs: number;
  log: Logger;
  /** The server said its tools changed (notifications/tools/list_changed). */
  onToolsChanged?: () => void;
  /** An open connection was lost (the server exited, its endpoint stopped answering). */
  onLost?: () => void;
}

/**
 * This process's one connection to an MCP server, shared by discovery and every call. It is
 * opened on first use and again after it was lost: a stdio server that exited is started anew,
 * an HTTP server gets a new session. Opening is bounded by the connect time-out, so a server
 * that is down costs a caller that long at most, never a blocked process.
 */
export class McpConnection {
  private opening: Promise<Live> | null = null;
  private live: Live | null = null;
  private closed = false;

  constructor(private readonly opts: McpConnectionOptions) {}

  get name(): string {
    return this.opts.server.name;
  }

  /** Every tool the server offers (all pages), connecting first when needed. */
  async listTools(): Promise<McpTool[]> {
    const { client } = await this.connected();
    const tools: McpTool[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      // A server that pages forever must not hold a process's start: the listing stops at MAX_TOOL_PAGES.
      if (++pages > MAX_TOOL_PAGES) throw new Error(`the server listed more than ${MAX_TOOL_PAGES} pages of tools`);
      const page = await this.dropOnTransportFailure(client.listTools(cursor === undefined ? {} : { cursor }, { timeout: this.opts.connectTimeoutMs }));
      tools.push(...page.tools);
      cursor = page.nextCursor;
    } while (cursor !== undefined);
    return tools;
  }

  /**
   * Calls a tool with the runtime's idempotency key in `_meta`. `signal` ends the wait (and
   * tells the server to cancel). A request the server refused for an expired session (404, the
   * server restarted) is sent again once on a new session: it never ran.
   */
  async callTool(tool: string, args: Record<string, unknown>, meta: Record<string, unknown>, signal: AbortSignal): Promise<CallToolResult> {
    for (let attempt = 1; ; attempt++) {
      const { client } = await abortable(this.connected(), signal);
      try {
        return (await this.dropOnTransportFailure(client.callTool({ name: tool, arguments: args, _meta: meta }, undefined, { signal, timeout: NO_SDK_TIMEOUT_MS }))) as CallToolResult;
      } catch (error) {
        if (attempt === 1 && error instanceof StreamableHTTPError && error.code === 404 && !signal.aborted) continue;
        throw error;
      }
    }
  }

  /** Closes the connection (a stdio server's process ends); it is not opened again. */
  async close(): Promise<void> {
    this.closed = true;
    const live = this.live ?? (await this.opening?.catch(() => null));
    this.live = null;
    this.opening = null;
    await live?.client.close().catch(() => undefined);
  }

  private connected(): Promise<Live> {
    if (this.closed) return Promise.reject(new McpUnavailableError(`MCP server "${this.name}": this process is stopping`));
    if (this.live) return Promise.resolve(this.live);
    if (!this.opening) {
      this.opening = this.open().finally(() => {
        this.opening = null;
      });
    }
    return this.opening;
  }

  private async open(): Promise<Live> {
    const transport = this.transport();
    const client = new Client(CLIENT_INFO, { capabilities: {} });
    const live: Live = { client, transport };
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      this.opts.onToolsChanged?.();
    });
    client.onclose = () => {
      if (this.live !== live) return;
      this.live = null;
      this.opts.log.warn({ mcpServer: this.name }, 'MCP connection closed: the next use connects again');
      this.opts.onLost?.();
    };
    client.onerror = (error) => this.onTransportError(live, error);
    try {
      await client.connect(transport, { timeout: this.opts.connectTimeoutMs });
    } catch (error) {
      await client.close().catch(() => undefined);
      throw new McpUnavailableError(`MCP server "${this.name}" is unreachable: ${describe(error)}`);
    }
    if (this.closed) {
      await client.close().catch(() => undefined);
      throw new McpUnavailableError(`MCP server "${this.name}": this process is stopping`);
    }
    this.live = live;
    return live;
  }

  private transport(): Transport {
    const server = this.opts.server;
    if (server.transport === 'stdio') {
      const env: Record<string, string> = { ...server.env };
      for (const [name, secret] of Object.entries(server.secretEnv ?? {})) env[name] = this.secret(secret, `environment variable ${name}`);
      const transport = new StdioClientTransport({ command: server.command, args: server.args ?? [], env, stderr: 'pipe' });
      const stderr = transport.stderr as Readable | null;
      if (stderr) {
        readline.createInterface({ input: stderr }).on('line', (line) => this.opts.log.info({ mcpServer: this.name, stderr: line.slice(0, MAX_STDERR_LINE) }, 'MCP server stderr'));
      }
      return transport;
    }
    const headers: Record<string, string> = {};
    for (const [header, secret] of Object.entries(server.headers ?? {})) headers[header] = this.secret(secret, `header ${header}`);
    return new StreamableHTTPClientTransport(new URL(server.url), { requestInit: { headers } });
  }

  private secret(name: string, usedFor: string): string {
    const value = this.opts.secrets[name];
    if (value === undefined) throw new McpConfigurationError(`MCP server "${this.name}": ${usedFor} needs the secret KEEL_SECRET_${name}, which is not set`);
    return value;
  }

  /**
   * An HTTP server's event stream broke: when the server does not answer a ping either, the
   * connection is given up, which fails the calls waiting on it at once (instead of at their
   * time-out) and makes the next one connect anew.
   */
  private onTransportError(live: Live, error: Error): void {
    if (this.live !== live) return;
    this.opts.log.warn({ mcpServer: this.name, error: error.message }, 'MCP transport error');
    if (!/disconnected|reconnect/i.test(error.message)) return;
    live.client.ping({ timeout: this.opts.connectTimeoutMs }).catch(() => this.drop(live));
  }

  /** A request that failed in the transport (connection refused, an HTTP error) leaves the connection to be opened again. */
  private async dropOnTransportFailure<T>(request: Promise<T>): Promise<T> {
    const live = this.live;
    try {
      return await request;
    } catch (error) {
      if (live && (error instanceof StreamableHTTPError || error instanceof TypeError)) this.drop(live);
      throw error;
    }
  }

  private drop(live: Live): void {
    if (this.live !== live) return;
    this.live = null;
    this.opts.log.warn({ mcpServer: this.name }, 'MCP connection lost: the next use connects again');
    void live.client.close().catch(() => undefined);
    this.opts.onLost?.();
  }
}

function describe(error: unknown): string {
  const err = error as { message?: string; cause?: { code?: string; message?: string } };
  const cause = err.cause?.code ?? err.cause?.message;
  return `${err.message ?? String(error)}${cause && !err.message?.includes(cause) ? ` (${cause})` : ''}`;
}

function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error as Error);
      },
    );
  });
}
