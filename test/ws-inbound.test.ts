import { startStack, type Stack } from './support/stack';

/**
 * Client frames under load: a slow frame (an approval decision the workflow waits up to 10 s
 * on) must neither hold up a cancel nor let the socket's queue of waiting frames grow.
 */

const MAX_PENDING_FRAMES = 4;

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_WS_MAX_PENDING_FRAMES: String(MAX_PENDING_FRAMES) } });
});
afterAll(async () => {
  await stack?.stop();
});

/**
 * A pending approval the database knows and the workflow does not: a decision for it passes the
 * API's checks, and the workflow then waits out its replay grace (10 s) before refusing it.
 */
async function slowApproval(sessionId: string, toolCallId: string): Promise<void> {
  await stack.db.query(
    `INSERT INTO tool_calls (id, model_call_id, session_id, turn, step, name, arguments, status, digest, requires_approval, expires_at)
     VALUES ($1, 'call_unknown', $2, 1, 1, 'create_note', '{}', 'pending_approval', 'digest', true, now() + interval '1 hour')`,
    [toolCallId, sessionId],
  );
}

test('a cancel is answered at once while a slow approval decision is still waiting', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  await slowApproval(sessionId, 'tc_slow_cancel');
  const sentAt = Date.now();
  ws.send({ type: 'approval', toolCallId: 'tc_slow_cancel', approved: true });
  ws.send({ type: 'cancel' });

  const result = await ws.waitFor((f) => f.type === 'cancel.result', 8_000);
  const cancelMs = Date.now() - sentAt;
  expect(result.data).toMatchObject({ cancelled: false });
  const refused = await ws.waitFor((f) => f.type === 'error' && f.data.toolCallId === 'tc_slow_cancel', 30_000);
  const approvalMs = Date.now() - sentAt;
  expect(refused.data.code).toBe('APPROVAL_NOT_FOUND');
  // The race was there: the approval took seconds, and the cancel behind it did not wait for it.
  expect(approvalMs).toBeGreaterThan(5_000);
  expect(ws.frames.indexOf(result)).toBeLessThan(ws.frames.indexOf(refused));
  expect(cancelMs).toBeLessThan(approvalMs - 3_000);
}, 40_000);

test('a cancel frame naming the running turn stops it and says so; one naming another turn does not', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { firstTokenDelayMs: 5_000 });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'take your time' });
  const start = await ws.waitFor((f) => f.type === 'stream.start');
  ws.send({ type: 'cancel', turn: start.data.turn + 1 });
  const stale = await ws.waitFor((f) => f.type === 'cancel.result');
  expect(stale.data).toMatchObject({ cancelled: false });
  ws.send({ type: 'cancel', turn: start.data.turn });
  const hit = await ws.waitFor((f) => f.type === 'cancel.result' && f !== stale);
  expect(hit.data).toEqual({ cancelled: true, turn: start.data.turn });
  expect((await ws.waitFor((f) => f.type === 'turn.done')).data.status).toBe('cancelled');
  ws.send({ type: 'cancel', turn: 0 });
  const invalid = await ws.waitFor((f) => f.type === 'error' && f.data.code !== 'TURN_CANCELLED');
  expect(invalid.data).toMatchObject({ code: 'VALIDATION_ERROR', details: { field: 'turn' } });
}, 30_000);

test(`more than ${MAX_PENDING_FRAMES} frames waiting closes the socket with 4008 after a RATE_LIMIT_EXCEEDED frame`, async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  await slowApproval(sessionId, 'tc_slow_flood');
  const closed = new Promise<number>((resolve) => ws.ws.once('close', (code) => resolve(code)));
  ws.send({ type: 'approval', toolCallId: 'tc_slow_flood', approved: true });
  for (let i = 0; i < 20; i++) ws.send({ type: 'ping' });

  expect(await closed).toBe(4008);
  const errors = ws.frames.filter((f) => f.type === 'error');
  expect(errors).toHaveLength(1);
  expect(errors[0]!.data).toMatchObject({ code: 'RATE_LIMIT_EXCEEDED', recoverable: true });
  // Every ping was still waiting behind the slow approval: the queue bound, not the burst, closed the socket.
  expect(ws.frames.some((f) => f.type === 'pong')).toBe(false);
  expect(stack.api.child.exitCode).toBeNull();
}, 30_000);
