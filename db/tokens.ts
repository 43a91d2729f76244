import { createHash, randomBytes } from 'node:crypto';
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

const TokenUser = z.object({ user_id: z.string(), is_admin: z.boolean() });
export type TokenUser = { userId: string; isAdmin: boolean };

/** Issues a token; only its hash is stored, so the caller sees the token once. */
export async function issueToken(db: CommonQueryMethods, input: { userId: string; isAdmin: boolean; label?: string }): Promise<{ id: string; token: string }> {
  const id = `tok_${randomBytes(8).toString('hex')}`;
  const token = `keel_${randomBytes(24).toString('base64url')}`;
  await db.query(sql.unsafe`
    INSERT INTO api_tokens (id, user_id, token_hash, is_admin, label)
    VALUES (${id}, ${input.userId}, ${hashToken(token)}, ${input.isAdmin}, ${input.label ?? null})`);
  return { id, token };
}

export async function revokeToken(db: CommonQueryMethods, id: string): Promise<boolean> {
  const result = await db.query(sql.unsafe`UPDATE api_tokens SET revoked_at = now() WHERE id = ${id} AND revoked_at IS NULL`);
  return result.rowCount > 0;
}

/** The user of a token, by the token's hash; null when unknown or revoked. */
export async function userForTokenKey(db: CommonQueryMethods, tokenKey: string): Promise<TokenUser | null> {
  const row = await db.maybeOne(sql.type(TokenUser)`
    SELECT user_id, is_admin FROM api_tokens WHERE token_hash = ${tokenKey} AND revoked_at IS NULL`);
  return row ? { userId: row.user_id, isAdmin: row.is_admin } : null;
}

/** Which of these token hashes still name a token that is not revoked. */
export async function liveTokenKeys(db: CommonQueryMethods, tokenKeys: readonly string[]): Promise<Set<string>> {
  if (tokenKeys.length === 0) return new Set();
  const rows = await db.anyFirst(sql.type(z.object({ token_hash: z.string() }))`
    SELECT token_hash FROM api_tokens WHERE token_hash = ANY(${sql.array([...tokenKeys], 'text')}) AND revoked_at IS NULL`);
  return new Set(rows);
}

/**
 * Registers the development token as `tok_dev` for user "dev". A revoked dev token stays
 * revoked (false): an operator's revocation must survive restarts.
 */
export async function registerDevToken(db: CommonQueryMethods, token: string): Promise<boolean> {
  const registered = await db.maybeOneFirst(sql.type(z.object({ id: z.string() }))`
    INSERT INTO api_tokens (id, user_id, token_hash, is_admin, label)
    VALUES ('tok_dev', 'dev', ${hashToken(token)}, false, 'development token')
    ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash WHERE api_tokens.revoked_at IS NULL
    RETURNING id`);
  return registered !== null;
}
