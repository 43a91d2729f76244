import http from 'node:http';
import { createLogger } from '../config/logger';
import { createMetrics } from '../config/metrics';
import { startTracing } from '../config/tracing';
import { KeelError } from '../contracts/errors';
import { limitMessageContent } from '../contracts/frames';
import { activeSessionCount } from './metrics';
import { Authenticator } from './auth';
import { databaseUrlOf, loadSettings } from '../config/settings';
import { migrate } from '../db/migrate';
import { openPool } from '../db/pool';
import { createApp } from './app';
import { Connections } from './connections';
import { EventHub } from './event-hub';
import { SessionFeed } from './session-feed';
import { UserFeed } from './user-feed';
import { SessionService } from './session-service';
import { RateLimiter } from './rate-limiter';
import { attachWebSocket } from './ws';
import { AgentRegistry } from '../agents/registry';
import { createToolCatalog } from '../tools';
import { checkMcpTools, startMcp } from '../tools/mcp';
import { loadMcpServers } from '../agents/load';


async function main() {
  const settings = loadSettings();
  const log = createLogger(settings, 'api');
  // A stray rejection is a bug to log, not a reason to drop every connection of this process.
  process.on('unhandledRejection', (reason) => log.error({ err: reason }, 'unhandled promise rejection'));
  const tracing = startTracing(settings, 'keel-api');
  limitMessageContent(settings.api.maxContentChars);
  const databaseUrl = databaseUrlOf(settings);
  await migrate(databaseUrl);
  const pool = await openPool(databaseUrl, settings.dbPoolSize, { connectTimeoutMs: settings.dbConnectTimeoutMs });
  const metrics = createMetrics('api', { activeSessions: activeSessionCount(pool) });
  const hub = new EventHub(databaseUrl, log, metrics, { checkMs: settings.api.listenerCheckMs, reconnectMs: settings.api.listenerReconnectMs });
  await hub.start();
  const feed = new SessionFeed(hub, pool, settings.api, log);
  const userFeed = new UserFeed(hub, pool, log, settings.presence.userFeedCacheSessions);
  const tools = createToolCatalog(pool, settings.tools);
  // The API lists MCP tools too (it resolves agents that name them) but never calls them; its first listing is awaited (bounded by KEEL_MCP_CONNECT_TIMEOUT_MS).
  const mcp = startMcp({ servers: await loadMcpServers(settings.agentsFile), db: pool, catalog: tools, settings, log, execute: false });
  await mcp.firstRound;
  await checkMcpTools(settings.agentsFile, mcp, pool, log);
  const agents = await AgentRegistry.load(pool, settings.agentsFile, tools);
  const limiter = new RateLimiter(pool, settings.rateLimits);
  const sessions = await SessionService.connect(settings, pool, agents, metrics, limiter, log, tools);
  const auth = new Authenticator(pool, settings.auth, log);
  await auth.ensureDevToken();
  const connections = new Connections();
  connections.checkRevocations(auth, Math.max(100, Math.floor(settings.auth.tokenCacheMs / 2)), log);
  const deps = { settings, pool, hub, feed, userFeed, connections, sessions, agents, tools, auth, limiter, log, metrics };
  const app = createApp(deps).callback();
  const server = http.createServer((req, res) => {
    // A request on a kept-alive connection while the process stops.
    if (!connections.stopping) return void app(req, res);
    const body = JSON.stringify({ error: new KeelError('SERVICE_UNAVAILABLE', 'The server is shutting down; try again').toBody() });
    res.writeHead(503, { 'content-type': 'application/json', connection: 'close', 'content-length': Buffer.byteLength(body) }).end(body);
  });
  const ws = attachWebSocket(server, deps);
  await new Promise<void>((resolve) => server.listen(settings.api.port, settings.api.host, resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : settings.api.port;
  log.info({ port }, `api listening on http://127.0.0.1:${port}`);

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    const deadline = Date.now() + settings.api.drainMs;
    log.info({ drainMs: settings.api.drainMs }, 'api stopping: no new connections; WebSockets and event streams end, /chat requests finish');
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const { unfinishedChats } = await connections.drain(settings.api.drainMs);
    if (unfinishedChats > 0) log.warn({ unfinishedChats }, 'api drain time over: cutting /chat requests still waiting');
    await ws.close(Math.max(1_000, deadline - Date.now()));
    server.closeAllConnections();
    await closed;
    await hub.close();
    await sessions.close();
    limiter.close();
    await mcp.close();
    await pool.end();
    await tracing?.shutdown();
    log.info('api stopped');
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
}

main().catch((error: unknown) => {
  console.error('api failed:', error);
  process.exit(1);
});
