import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Context, Next } from 'koa';
import type { DatabasePool } from 'slonik';
import { KeelError } from '../contracts/errors';
import { SESSION_EVENTS_TOKEN_PREFIX } from '../contracts/presence';
import type { Logger } from '../config/logger';
import type { Settings } from '../config/settings';
import { hashToken, liveTokenKeys, registerDevToken, userForTokenKey } from '../db/tokens';

export interface Caller {
  userId: string;
  isAdmin: boolean;
  /** The token's hash: what per-token rate limits count against (the token itself is never kept). */
  tokenKey: string;
}

/** With authentication switched off every caller is this admin; the API says so loudly at start. */
const UNAUTHENTICATED: Caller = { userId: 'anonymous', isAdmin: true, tokenKey: 'anonymous' };
const PUBLIC_PATHS = new Set(['/api/v1/health', '/api/v1/ready', '/metrics']);
/** The one route that also takes a session's events token instead of a user's. */
const EXTERNAL_EVENTS_PATH = /^\/api\/v1\/sessions\/[^/]+\/external-events$/;

const digest = (s: string) => createHash('sha256').update(s).digest();
/** Token lookups kept per process; beyond this the oldest is dropped. */
const MAX_CACHED_TOKENS = 10_000;

/** The token of an `Authorization: Bearer <token>` header. */
export function bearerToken(header: string | undefined): string | undefined {
  return /^Bearer\s+(\S+)$/i.exec(header ?? '')?.[1];
}

/** A WebSocket's token: `?token=`, the `bearer, <token>` subprotocol pair (what browsers can send), or an Authorization header. */
export function upgradeToken(req: IncomingMessage, url: URL): string | undefined {
  const fromQuery = url.searchParams.get('token');
  if (fromQuery) return fromQuery;
  const protocols = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
  const index = protocols.indexOf('bearer');
  if (index >= 0 && protocols[index + 1]) return protocols[index + 1];
  return bearerToken(req.headers.authorization);
}

/** Bearer tokens for users, X-API-Key for admin endpoints. */
export class Authenticator {
  private readonly cache = new Map<string, { caller: Caller | null; until: number }>();

  constructor(
    private readonly pool: DatabasePool,
    private readonly settings: Settings['auth'],
    private readonly log: Logger,
  ) {
    if (settings.disabled) log.warn('AUTHENTICATION IS DISABLED (KEEL_AUTH_DISABLED=true): every caller is an admin. Never run this way in production.');
  }

  /** Registers the development token (npm start prints it) for user "dev"; a revoked one stays revoked. */
  async ensureDevToken(): Promise<void> {
    if (!this.settings.devToken) return;
    if (!(await registerDevToken(this.pool, this.settings.devToken))) {
      this.log.warn('The development token (tok_dev) is revoked and stays revoked: KEEL_DEV_TOKEN does not authenticate. Issue a new token with the admin API.');
    }
  }

  /** Looks a token up, caching the answer briefly: a revoked token stops working within KEEL_TOKEN_CACHE_MS. */
  async callerFor(token: string | undefined): Promise<Caller | null> {
    if (this.settings.disabled) return UNAUTHENTICATED;
    if (!token) return null;
    return this.callerForKey(hashToken(token));
  }

  /** The same lookup by the token's hash (Caller.tokenKey), for connections that outlive a request. */
  async callerForKey(tokenKey: string): Promise<Caller | null> {
    if (this.settings.disabled) return UNAUTHENTICATED;
    const now = Date.now();
    const cached = this.cache.get(tokenKey);
    if (cached && cached.until > now) return cached.caller;
    const user = await userForTokenKey(this.pool, tokenKey);
    const caller = user ? { userId: user.userId, isAdmin: user.isAdmin, tokenKey } : null;
    this.cache.delete(tokenKey);
    if (this.cache.size >= MAX_CACHED_TOKENS) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(tokenKey, { caller, until: now + this.settings.tokenCacheMs });
    return caller;
  }

  /**
   * Which of these tokens are revoked (or gone), asked of the database now, not of the cache;
   * they are dropped from the cache too, so REST calls with them fail at once.
   */
  async revokedAmong(tokenKeys: Iterable<string>): Promise<Set<string>> {
    if (this.settings.disabled) return new Set();
    const keys = [...new Set(tokenKeys)];
    const live = await liveTokenKeys(this.pool, keys);
    const revoked = new Set(keys.filter((k) => !live.has(k)));
    for (const key of revoked) this.cache.delete(key);
    return revoked;
  }

  /** Every /api/v1 route but health and readiness needs a caller; admin routes use the API key instead. */
  middleware() {
    return async (ctx: Context, next: Next) => {
      if (PUBLIC_PATHS.has(ctx.path) || ctx.path.startsWith('/api/v1/admin/')) return next();
      const token = bearerToken(ctx.get('authorization'));
      // A session's events token (docs/presence.md) is checked by the one route that takes it, never looked up as a user's.
      if (token?.startsWith(SESSION_EVENTS_TOKEN_PREFIX) && EXTERNAL_EVENTS_PATH.test(ctx.path)) {
        ctx.state.eventsToken = token;
        return next();
      }
      const caller = await this.callerFor(token);
      if (!caller) throw new KeelError('UNAUTHORIZED', token ? 'The token is not valid' : 'Authorization: Bearer <token> is required');
      ctx.state.caller = caller;
      return next();
    };
  }

  /** X-API-Key, compared in constant time: 401 when missing, 403 when wrong. */
  adminGuard() {
    return async (ctx: Context, next: Next) => {
      const given = ctx.get('x-api-key');
      if (!given) throw new KeelError('UNAUTHORIZED', 'X-API-Key is required');
      const expected = this.settings.adminApiKey;
      if (!expected || !timingSafeEqual(digest(given), digest(expected))) throw new KeelError('FORBIDDEN', 'The API key is not valid');
      return next();
    };
  }
}

export function callerOf(ctx: Context): Caller {
  return ctx.state.caller as Caller;
}

/** The caller, who must hold an admin token (403 FORBIDDEN otherwise). */
export function adminCallerOf(ctx: Context): Caller {
  const caller = callerOf(ctx);
  if (!caller.isAdmin) throw new KeelError('FORBIDDEN', 'This needs an admin token');
  return caller;
}
