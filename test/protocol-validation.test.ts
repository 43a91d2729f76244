import { startStack, type Stack } from './support/stack';

let stack: Stack;
let sessionId: string;
beforeAll(async () => {
  stack = await startStack();
  sessionId = await stack.createSession();
});
afterAll(async () => {
  await stack?.stop();
});

test('malformed WebSocket frames get error frames in a fixed order and the socket stays open', async () => {
  const ws = await stack.ws(sessionId);
  const cases: [unknown, string, string?][] = [
    ['x'.repeat(32_769), 'PAYLOAD_TOO_LARGE'],
    ['{not json', 'INVALID_JSON'],
    ['[1,2]', 'VALIDATION_ERROR', '(root)'],
    ['"text"', 'VALIDATION_ERROR', '(root)'],
    [{ type: 'message', content: 'hi', clientMessageId: 'bad id!' }, 'VALIDATION_ERROR', 'clientMessageId'],
    [{ type: 'message', content: '   ' }, 'VALIDATION_ERROR', 'content'],
    [{ type: 'message', content: 'x'.repeat(10_001) }, 'VALIDATION_ERROR', 'content'],
    [{ type: 'shout', content: 'hi' }, 'UNKNOWN_FRAME_TYPE', 'type'],
    [{ content: 'hi' }, 'UNKNOWN_FRAME_TYPE', 'type'],
  ];
  for (const [frame, code, field] of cases) {
    const before = ws.frames.length;
    ws.send(frame);
    const error = await ws.waitFor((f) => ws.frames.indexOf(f) >= before && f.type === 'error');
    expect(error.data.code).toBe(code);
    if (field) expect(error.data.details).toEqual({ field });
    expect(JSON.stringify(error)).not.toContain('bad id!');
  }
  ws.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  await ws.waitForCount((f) => f.type === 'error', cases.length + 1);
  ws.send({ type: 'ping' });
  await ws.waitFor((f) => f.type === 'pong');

  ws.send({ type: 'message', content: 'x'.repeat(10_000) });
  const done = await ws.waitFor((f) => f.type === 'turn.done');
  expect(done.data.status).toBe('completed');
});

test('malformed REST bodies get one error envelope with a stable code', async () => {
  const path = `/api/v1/sessions/${sessionId}/messages`;
  const cases: [string, string, unknown, number, string][] = [
    ['POST', path, '{oops', 400, 'INVALID_JSON'],
    ['POST', path, {}, 422, 'VALIDATION_ERROR'],
    ['POST', path, { content: '' }, 422, 'VALIDATION_ERROR'],
    ['POST', path, { content: 'x'.repeat(10_001) }, 422, 'VALIDATION_ERROR'],
    ['POST', path, { content: 'hi', extra: 1 }, 422, 'VALIDATION_ERROR'],
    ['POST', path, { content: 'hi', clientMessageId: 'no spaces allowed' }, 422, 'VALIDATION_ERROR'],
    ['POST', path, { content: 'x'.repeat(70_000) }, 413, 'PAYLOAD_TOO_LARGE'],
    ['POST', '/api/v1/sessions/not%20valid/messages', { content: 'hi' }, 422, 'VALIDATION_ERROR'],
    ['POST', '/api/v1/sessions/unknown-session/messages', { content: 'hi' }, 404, 'SESSION_NOT_FOUND'],
    ['GET', '/api/v1/sessions/unknown-session', undefined, 404, 'SESSION_NOT_FOUND'],
    ['GET', `/api/v1/sessions/${sessionId}/messages?limit=101`, undefined, 422, 'VALIDATION_ERROR'],
    ['POST', '/api/v1/sessions', { title: 5 }, 422, 'VALIDATION_ERROR'],
    ['GET', '/api/v1/nothing-here', undefined, 404, 'NOT_FOUND'],
    ['POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'hi', attachments: [{ a: 1 }] }, 422, 'VALIDATION_ERROR'],
  ];
  for (const [method, url, body, status, code] of cases) {
    const res = await stack.request(method, url, body);
    expect([url, res.status]).toEqual([url, status]);
    expect(res.body.error).toMatchObject({ code, recoverable: expect.any(Boolean), requestId: expect.any(String) });
    expect(res.text).not.toMatch(/\n\s+at /);
  }
  const ok = await stack.request('GET', `/api/v1/sessions/${sessionId}/messages?limit=100`);
  expect(ok.status).toBe(200);
  const health = await stack.request('GET', '/api/v1/health');
  expect(health.body).toEqual({ status: 'ok', version: expect.any(String), checks: { temporal: true, postgres: true, worker: true } });
  const ready = await stack.request('GET', '/api/v1/ready');
  expect([ready.status, ready.body.ready]).toEqual([200, true]);
});

test('wrong methods, non-JSON bodies and unknown keys get the envelope too, without echoing input', async () => {
  const check = (res: Awaited<ReturnType<Stack['request']>>, status: number, code: string) => {
    expect([res.status, res.body?.error?.code]).toEqual([status, code]);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  };
  check(await stack.request('POST', `/api/v1/sessions/${sessionId}`, {}), 405, 'METHOD_NOT_ALLOWED');
  check(await stack.request('PUT', '/api/v1/sessions', {}), 405, 'METHOD_NOT_ALLOWED');
  check(await stack.request('PROPFIND', '/api/v1/sessions'), 405, 'METHOD_NOT_ALLOWED');

  const path = `/api/v1/sessions/${sessionId}/messages`;
  check(await stack.request('POST', '/api/v1/sessions', '{"title":"x"}', { 'content-type': 'text/plain' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
  check(await stack.request('POST', path, 'content=hi', { 'content-type': 'application/x-www-form-urlencoded' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
  check(await stack.request('POST', path, '{"content":"hi"}', { 'content-type': 'application/json; charset=utf-16' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
  // No body at all is an empty object: a session with defaults.
  expect((await stack.request('POST', '/api/v1/sessions')).status).toBe(201);

  const longKey = `k${'x'.repeat(200)}`;
  const unknown = await stack.request('POST', path, { content: 'hi', [longKey]: 1, 'bad key!': 2 });
  check(unknown, 422, 'VALIDATION_ERROR');
  expect(unknown.text).not.toContain(longKey);
  expect(unknown.text).not.toContain('bad key!');
  const named = await stack.request('POST', path, { content: 'hi', colour: 'blue' });
  expect(named.body.error.details).toEqual([{ field: '(root)', problem: 'unknown field(s): colour' }]);
});
