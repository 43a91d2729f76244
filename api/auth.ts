import { createHash, timingSafeEqual } from 'node:crypto';
import type { Context, Next } from 'koa';
import type { DatabasePool } from 'slonik';
import { KeelError } from '../contracts/errors';
import type { Logger } from '../config/logger';
import type { Settings } from '../config/settings';
import { hashToken, userForToken } from '../db/tokens';
import { sql } from 'slonik';

export interface Caller {
  userId: string;
  isAdmin: boolean;
  /** The token's hash: what per-token rate limits count against (the token itself is never kept). */
  tokenKey: string;
}

/** With authentication switched off every caller is this admin; the API says so loudly at start. */
const UNAUTHENTICATED: Caller = { userId: 'anonymous', isAdmin: true, tokenKey: 'anonymous' };
const PUBLIC_PATHS = new Set(['/api/v1/health', '/api/v1/ready', '/metrics']);

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Bearer tokens for users, X-API-Key for admin endpoints. */
export class Authenticator {
  private readonly cache = new Map<string, { caller: Caller | null; until: number }>();

  constructor(
    private readonly pool: DatabasePool,
    private readonly settings: Settings['auth'],
    log: Logger,
  ) {
    if (settings.disabled) log.warn('AUTHENTICATION IS DISABLED (KEEL_AUTH_DISABLED=true): every caller is an admin. Never run this way in production.');
  }

  /** Registers the development token (npm start prints it) for user "dev". */
  async ensureDevToken(): Promise<void> {
    if (!this.settings.devToken) return;
    await this.pool.query(sql.unsafe`
      INSERT INTO api_tokens (id, user_id, token_hash, is_admin, label)
      VALUES ('tok_dev', 'dev', ${hashToken(this.settings.devToken)}, false, 'development token')
      ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, revoked_at = NULL`);
  }

  /** Looks a token up, caching the answer briefly: a revoked token stops working within KEEL_TOKEN_CACHE_MS. */
  async callerFor(token: string | undefined): Promise<Caller | null> {
    if (this.settings.disabled) return UNAUTHENTICATED;
    if (!token) return null;
    const now = Date.now();
    const cached = this.cache.get(token);
    if (cached && cached.until > now) return cached.caller;
    const user = await userForToken(this.pool, token);
    const caller = user ? { userId: user.userId, isAdmin: user.isAdmin, tokenKey: hashToken(token) } : null;
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(token, { caller, until: now + this.settings.tokenCacheMs });
    return caller;
  }

  /** Every /api/v1 route but health and readiness needs a caller; admin routes use the API key instead. */
  middleware() {
    return async (ctx: Context, next: Next) => {
      if (PUBLIC_PATHS.has(ctx.path) || ctx.path.startsWith('/api/v1/admin/')) return next();
      const header = ctx.get('authorization');
      const token = /^Bearer\s+(\S+)$/i.exec(header)?.[1];
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
