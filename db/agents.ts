import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { digestOf } from '../contracts/canonical';
import { AgentDefinition } from '../contracts/agents';

export const StoredAgent = z.object({
  id: z.string(),
  version: z.number(),
  digest: z.string(),
  // Parsed with today's schema, so definitions stored before a field was added get its default.
  definition: AgentDefinition,
});
export type StoredAgent = z.infer<typeof StoredAgent>;

export interface SyncedAgent {
  id: string;
  version: number;
  digest: string;
  /** False when an identical definition was already stored. */
  created: boolean;
}

// Each round of a race stores at least one definition, so this bounds the processes starting together.
const MAX_SYNC_ATTEMPTS = 20;

/**
 * Stores each definition unless an identical one (same digest) is stored already, in which case
 * that version is kept. New definitions get the latest version + 1. Safe when several processes
 * start together: see syncAgent.
 */
export async function syncAgents(db: CommonQueryMethods, defs: AgentDefinition[]): Promise<SyncedAgent[]> {
  const synced: SyncedAgent[] = [];
  for (const def of defs) synced.push(await syncAgent(db, def, digestOf(def)));
  return synced;
}

/**
 * Two processes storing the same new definition meet on (id, digest): the loser stores nothing
 * and finds the winner's row on its next round. With different definitions they meet on the
 * primary key (both chose the same next version): the loser stores nothing and tries the next one.
 */
async function syncAgent(db: CommonQueryMethods, def: AgentDefinition, digest: string): Promise<SyncedAgent> {
  for (let attempt = 1; attempt <= MAX_SYNC_ATTEMPTS; attempt++) {
    const existing = await agentByDigest(db, def.id, digest);
    if (existing) return { id: existing.id, version: existing.version, digest, created: false };
    const inserted = await insertNextVersion(db, def, digest);
    if (inserted) return { ...inserted, digest, created: true };
  }
  throw new Error(`agent "${def.id}": no version could be stored after ${MAX_SYNC_ATTEMPTS} attempts`);
}

const Inserted = z.object({ id: z.string(), version: z.number() });

async function insertNextVersion(db: CommonQueryMethods, def: AgentDefinition, digest: string): Promise<z.infer<typeof Inserted> | null> {
  return db.maybeOne(sql.type(Inserted)`
    INSERT INTO agents (id, version, digest, definition)
    SELECT ${def.id}, COALESCE(MAX(version), 0) + 1, ${digest}, ${sql.jsonb(def as never)}
    FROM agents WHERE id = ${def.id}
    ON CONFLICT DO NOTHING
    RETURNING id, version`);
}

async function agentByDigest(db: CommonQueryMethods, id: string, digest: string): Promise<StoredAgent | null> {
  return db.maybeOne(sql.type(StoredAgent)`
    SELECT id, version, digest, definition FROM agents WHERE id = ${id} AND digest = ${digest}`);
}

/** The highest stored version of an agent. */
export async function latestAgent(db: CommonQueryMethods, id: string): Promise<StoredAgent | null> {
  return db.maybeOne(sql.type(StoredAgent)`
    SELECT id, version, digest, definition FROM agents WHERE id = ${id}
    ORDER BY version DESC LIMIT 1`);
}

/** The highest stored version of every agent, by id. */
export async function listLatestAgents(db: CommonQueryMethods): Promise<StoredAgent[]> {
  const rows = await db.any(sql.type(StoredAgent)`
    SELECT DISTINCT ON (id) id, version, digest, definition FROM agents
    ORDER BY id, version DESC`);
  return [...rows];
}

/** One version of an agent, as a session that started with it needs it. */
export async function agentVersion(db: CommonQueryMethods, id: string, version: number): Promise<StoredAgent | null> {
  return db.maybeOne(sql.type(StoredAgent)`
    SELECT id, version, digest, definition FROM agents WHERE id = ${id} AND version = ${version}`);
}
