import type { ToolCatalog } from '../tools/catalog';
import type { DatabasePool } from 'slonik';
import type { AgentRegistry } from '../agents/registry';
import type { Authenticator } from './auth';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import type { Settings } from '../config/settings';
import type { Connections } from './connections';
import type { EventHub } from './event-hub';
import type { RateLimiter } from './rate-limiter';
import type { SessionFeed } from './session-feed';
import type { SessionService } from './session-service';
import type { UserFeed } from './user-feed';

/** What the HTTP and WebSocket handlers need; built once per process in api/main.ts. */
export interface ApiDeps {
  settings: Settings;
  pool: DatabasePool;
  hub: EventHub;
  /** How WebSocket, SSE and /chat follow a session's events. */
  feed: SessionFeed;
  /** What the per-user sockets (GET /api/v1/ws) follow: every session's events, by owner. */
  userFeed: UserFeed;
  /** Open WebSockets and SSE streams, and /chat requests in flight. */
  connections: Connections;
  sessions: SessionService;
  agents: AgentRegistry;
  /** The tools agents are resolved against: built-in, and the catalog's (MCP, OpenAPI imports). */
  tools: ToolCatalog;
  auth: Authenticator;
  limiter: RateLimiter;
  log: Logger;
  metrics: Metrics;
}
