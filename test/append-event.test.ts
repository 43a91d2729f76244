import { Client } from 'pg';
import { sql } from 'slonik';
import { z } from 'zod';
import { ChannelMessage, EVENT_CHANNEL, MAX_NOTIFY_BYTES } from '../contracts/channel';
import { appendEvent } from '../db/events';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { createTestDatabase, dropTestDatabase } from './support/database';
import { eventually } from './support/stack';

/**
 * appendEvent's guarantees under concurrent writers of one session, against a real PostgreSQL:
 * gap-free seq, NOTIFYs in seq order, and one event per key when two writers race on a key.
 */

const databaseName = `keel_append_event_${process.pid}`;
let url: string;
let pool: DatabasePool;
let listener: Client;
const heard: ChannelMessage[] = [];

beforeAll(async () => {
  url = await createTestDatabase(databaseName);
  await migrate(url);
  pool = await openPool(url, 12);
  listener = new Client({ connectionString: url });
  await listener.connect();
  listener.on('notification', (n) => heard.push(ChannelMessage.parse(JSON.parse(n.payload ?? ''))));
  await listener.query(`LISTEN ${EVENT_CHANNEL}`);
});

afterAll(async () => {
  await listener?.end();
  await pool?.end();
  await dropTestDatabase(databaseName);
});

let sessions = 0;
async function newSession(): Promise<string> {
  const id = `s_append_${++sessions}`;
  await pool.query(sql.unsafe`INSERT INTO sessions (id, owner_id) VALUES (${id}, 'dev')`);
  return id;
}

const accepted = (sessionId: string, key: string, content = 'hello') =>
  ({ sessionId, key, type: 'message.accepted' as const, data: { messageId: key, turn: 1, content } });

const seqsOf = async (sessionId: string) =>
  [...(await pool.anyFirst(sql.type(z.object({ seq: z.number() }))`SELECT seq FROM session_events WHERE session_id = ${sessionId} ORDER BY seq`))];

async function heardFor(sessionId: string, count: number): Promise<ChannelMessage[]> {
  const mine = () => heard.filter((m) => m.sessionId === sessionId);
  await eventually(async () => mine().length >= count, 10_000, `${count} notifications`);
  return mine();
}

/** Whether a backend is blocked on a lock while running append_session_event. */
const appendWaitsOnLock = async () =>
  (await pool.oneFirst(sql.type(z.object({ n: z.number() }))`
    SELECT count(*)::int AS n FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%append_session_event%'`)) > 0;

test('40 writers of one session at once: seq 1..40 with no gap, and the NOTIFYs arrive in seq order', async () => {
  const sessionId = await newSession();
  const appended = await Promise.all(
    Array.from({ length: 40 }, (_, i) => pool.transaction((tx) => appendEvent(tx, accepted(sessionId, `k${i}`)))),
  );
  const expected = Array.from({ length: 40 }, (_, i) => i + 1);
  expect(appended.map((a) => a.event.seq).sort((a, b) => a - b)).toEqual(expected);
  expect(appended.every((a) => a.inserted)).toBe(true);
  expect(await seqsOf(sessionId)).toEqual(expected);
  const notes = await heardFor(sessionId, 40);
  expect(notes.map((m) => (m.k === 'e' ? m.seq : -1))).toEqual(expected);
});

test('a writer that waited on the lock for the same key returns the event the first one committed, and adds none', async () => {
  const sessionId = await newSession();
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  const first = pool.transaction(async (tx) => {
    const result = await appendEvent(tx, accepted(sessionId, 'same', 'first'));
    await held;
    return result;
  });
  // The first holds the session's lock, its event not yet committed.
  await eventually(() => lockHeld(sessionId), 10_000, 'the first writer to hold the lock');
  expect(await seqsOf(sessionId)).toEqual([]);
  const second = pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'same', 'second')));
  await eventually(appendWaitsOnLock, 10_000, 'the second writer to wait on the lock');
  release();
  const [a, b] = await Promise.all([first, second]);
  expect(a.inserted).toBe(true);
  expect(b.inserted).toBe(false);
  expect(b.event).toEqual(a.event);
  expect(b.event.data).toMatchObject({ content: 'first' });
  expect(await seqsOf(sessionId)).toEqual([1]);
  expect((await heardFor(sessionId, 1)).length).toBe(1);
});

test('an append rolled back leaves no hole: the next writer takes the seq it would have had (a guard: max + 1 under the lock gives this by construction)', async () => {
  const sessionId = await newSession();
  await pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'one')));
  await expect(
    pool.transaction(async (tx) => {
      await appendEvent(tx, accepted(sessionId, 'rolled-back'));
      throw new Error('roll back');
    }),
  ).rejects.toThrow('roll back');
  const next = await pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'two')));
  expect(next.event.seq).toBe(2);
  expect(await seqsOf(sessionId)).toEqual([1, 2]);
});

test('notifyFirst goes out just before a new event, and not with a repeated one', async () => {
  const sessionId = await newSession();
  const delta = (text: string): ChannelMessage => ({ k: 'd', sessionId, streamId: 't1-s1', attempt: 1, offset: 0, text });
  const end = await pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'end'), { notifyFirst: [delta('last '), delta('words')] }));
  expect(await heardFor(sessionId, 3)).toEqual([delta('last '), delta('words'), expect.objectContaining({ k: 'e', seq: end.event.seq })]);
  const again = await pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'end'), { notifyFirst: [delta('from a loser')] }));
  expect(again.inserted).toBe(false);
  const marker = await pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'marker')));
  const heardNow = await heardFor(sessionId, 4);
  expect(heardNow.map((m) => (m.k === 'd' ? m.text : m.k === 'e' ? m.seq : null))).toEqual(['last ', 'words', end.event.seq, marker.event.seq]);
});

test('an event too large for NOTIFY is announced by seq', async () => {
  const sessionId = await newSession();
  const big = await pool.transaction((tx) => appendEvent(tx, accepted(sessionId, 'big', 'x'.repeat(MAX_NOTIFY_BYTES))));
  const [note] = await heardFor(sessionId, 1);
  expect(note).toEqual({ k: 'p', sessionId, seq: big.event.seq });
});

async function lockHeld(sessionId: string): Promise<boolean> {
  // A row lock shows as a tuple lock only to waiters; a probe with NOWAIT tells whether it is held.
  try {
    await pool.transaction((tx) => tx.query(sql.unsafe`SELECT 1 FROM sessions WHERE id = ${sessionId} FOR NO KEY UPDATE NOWAIT`));
    return false;
  } catch {
    return true;
  }
}
