import { sql } from 'slonik';
import { z } from 'zod';
import { parseArgs, type Tool } from './tool';

const Args = z
  .object({
    title: z.string().trim().min(1).max(200),
    body: z.string().max(5000),
  })
  .strict();
type Args = z.infer<typeof Args>;

const NoteRow = z.object({ id: z.string(), title: z.string(), created_at: z.number() });

export interface CreateNoteResult {
  noteId: string;
  title: string;
  createdAt: string;
  /** 'already' when an earlier attempt of the same call had inserted the note. */
  applied: 'now' | 'already';
}

export const createNote: Tool<Args> = {
  definition: {
    name: 'create_note',
    description: 'Saves a note with a title and a body.',
    parameters: {
      type: 'object',
      properties: {
        title: { type: 'string', minLength: 1, maxLength: 200 },
        body: { type: 'string', maxLength: 5000 },
      },
      required: ['title', 'body'],
      additionalProperties: false,
    },
    permission: 'write',
    requiresApproval: true,
    timeoutMs: 5_000,
    retry: { maxAttempts: 3 },
    // Stored once per idempotency key: a repeat returns the note already saved.
    idempotent: true,
  },
  parse: (args) => parseArgs(Args, args),
  async execute({ title, body }, ctx): Promise<CreateNoteResult> {
    // The idempotency key is the same on every retry of this call, so the insert happens once.
    const inserted = await ctx.pool.maybeOne(sql.type(NoteRow)`
      INSERT INTO notes (session_id, title, body, idempotency_key)
      VALUES (${ctx.sessionId}, ${title}, ${body}, ${ctx.idempotencyKey})
      ON CONFLICT (idempotency_key) DO NOTHING
      RETURNING id::text AS id, title, created_at`);
    // A separate statement, so its snapshot sees a row that a concurrent attempt committed.
    const row =
      inserted ??
      (await ctx.pool.one(sql.type(NoteRow)`
        SELECT id::text AS id, title, created_at FROM notes WHERE idempotency_key = ${ctx.idempotencyKey}`));
    return { noteId: row.id, title: row.title, createdAt: new Date(row.created_at).toISOString(), applied: inserted ? 'now' : 'already' };
  },
};
