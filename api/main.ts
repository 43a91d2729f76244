import http from 'node:http';
import { createLogger } from '../config/logger';
import { createMetrics } from '../config/metrics';
import { startTracing } from '../config/tracing';
import { activeSessionCount } from './metrics';
import { Authenticator } from './auth';
import { databaseUrlOf, loadSettings } from '../config/settings';
import { migrate } from '../db/migrate';
import { openPool } from '../db/pool';
import { createApp } from './app';
import { EventHub } from './event-hub';
import { SessionService } from './session-service';
import { RateLimiter } from './rate-limiter';
import { attachWebSocket } from './ws';
import { AgentRegistry } from '../agents/registry';
import { builtinTools } from '../tools';

const toolDefinitions = () => Object.fromEntries(Object.entries(builtinTools).map(([name, tool]) => [name, tool.definition]));

async function main() {
  const settings = loadSettings();
  const log = createLogger(settings, 'api');
  const tracing = startTracing(settings, 'keel-api');
  const databaseUrl = databaseUrlOf(settings);
  await migrate(databaseUrl);
  const pool = await openPool(databaseUrl, settings.dbPoolSize);
  const metrics = createMetrics('api', { activeSessions: activeSessionCount(pool) });
  const hub = new EventHub(databaseUrl, pool, log, metrics);
  await hub.start();
  const agents = await AgentRegistry.load(pool, settings.agentsFile, toolDefinitions());
  const limiter = new RateLimiter(pool, settings.rateLimits);
  const sessions = await SessionService.connect(settings, pool, agents, metrics, limiter, log);
  const auth = new Authenticator(pool, settings.auth, log);
  await auth.ensureDevToken();
  const deps = { settings, pool, hub, sessions, agents, auth, limiter, log, metrics };
  const server = http.createServer(createApp(deps).callback());
  const ws = attachWebSocket(server, deps);
  await new Promise<void>((resolve) => server.listen(settings.api.port, settings.api.host, resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : settings.api.port;
  log.info({ port }, `api listening on http://127.0.0.1:${port}`);

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    log.info('api stopping');
    await ws.close();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
    await hub.close();
    await sessions.close();
    limiter.close();
    await pool.end();
    await tracing?.shutdown();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
}

main().catch((error: unknown) => {
  console.error('api failed:', error);
  process.exit(1);
});
