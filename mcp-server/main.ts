import { parseArgs } from 'node:util';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { startHttp } from './http';
import { Inventory } from './inventory';
import { createDemoServer, type DemoOptions } from './server';

const USAGE = 'usage: npm run mcp-server -- (--stdio | --http [--port 8931] [--host 127.0.0.1]) [--state FILE] [--delay-ms N]';

/** Keel's demo MCP server (docs/tools.md, "MCP servers"). Logs JSON lines on stderr: stdout is the stdio transport's. */
async function main() {
  const { values } = parseArgs({
    options: {
      stdio: { type: 'boolean', default: false },
      http: { type: 'boolean', default: false },
      port: { type: 'string', default: '8931' },
      host: { type: 'string', default: '127.0.0.1' },
      state: { type: 'string' },
      'delay-ms': { type: 'string', default: '0' },
    },
  });
  const delayMs = Number(values['delay-ms']);
  const port = Number(values.port);
  if (values.stdio === values.http || !Number.isInteger(delayMs) || delayMs < 0 || !Number.isInteger(port) || port < 0) {
    console.error(USAGE);
    process.exit(2);
  }
  const log: DemoOptions['log'] = (entry) => process.stderr.write(`${JSON.stringify({ ...entry, at: new Date().toISOString() })}\n`);
  const inventory = new Inventory(values.state);
  if (values.stdio) {
    await createDemoServer(inventory, { delayMs, log }, { enabled: false }).connect(new StdioServerTransport());
    // The client closing our stdin (or dying) ends the server.
    process.stdin.once('end', () => process.exit(0));
    log({ event: 'listening', transport: 'stdio' });
    return;
  }
  const { server, url } = await startHttp(inventory, { delayMs, log, host: values.host, port });
  log({ event: 'listening', transport: 'http', url });
  const stop = () => {
    server.close(() => process.exit(0));
    // Clients' event streams stay open otherwise.
    server.closeAllConnections();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((error: unknown) => {
  console.error('demo MCP server failed:', error);
  process.exit(1);
});
