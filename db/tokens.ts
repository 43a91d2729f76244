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

export async function userForToken(db: CommonQueryMethods, token: string): Promise<TokenUser | null> {
  const row = await db.maybeOne(sql.type(TokenUser)`
    SELECT user_id, is_admin FROM api_tokens WHERE token_hash = ${hashToken(token)} AND revoked_at IS NULL`);
  return row ? { userId: row.user_id, isAdmin: row.is_admin } : null;
}
