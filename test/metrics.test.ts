import { eventually, startStack, type Stack } from './support/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

/** A strict reading of the Prometheus text format: every sample line is `name{labels} value`. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)( \d+)?$/.exec(line);
    if (!match) throw new Error(`not Prometheus text: ${line}`);
    samples.set(`${match[1]}${match[2] ?? ''}`, Number(match[3]));
  }
  return samples;
}

const value = (samples: Map<string, number>, name: string, labels: Record<string, string>) => {
  for (const [key, v] of samples) {
    if (!key.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, l]) => key.includes(`${k}="${l}"`))) return v;
  }
  return undefined;
};

test('API and worker /metrics parse as Prometheus text and count a scripted turn', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'count me' });
  await ws.waitFor((f) => f.type === 'turn.done');
  ws.send({ type: 'shout' });
  await ws.waitFor((f) => f.type === 'error');

  const api = parsePrometheus((await stack.request('GET', '/metrics')).text);
  expect(value(api, 'keel_messages_total', { channel: 'websocket', component: 'api' })).toBe(1);
  expect(value(api, 'keel_open_websockets', { component: 'api' })).toBe(1);
  expect(value(api, 'keel_errors_total', { code: 'UNKNOWN_FRAME_TYPE' })).toBe(1);
  expect(value(api, 'keel_active_sessions', {})).toBe(1);
  expect(value(api, 'keel_event_channel_lag_seconds_count', {})).toBeGreaterThanOrEqual(4);

  const text = await (await fetch(stack.workerMetricsUrl)).text();
  const worker = parsePrometheus(text);
  expect(value(worker, 'keel_turns_total', { status: 'completed', component: 'worker' })).toBe(1);
  expect(value(worker, 'keel_time_to_first_token_seconds_count', {})).toBe(1);
  expect(value(worker, 'keel_tokens_total', { direction: 'output' })).toBeGreaterThan(0);
  expect([...worker.keys()].some((k) => k.startsWith('temporal_'))).toBe(true);
  for (const key of [...api.keys(), ...worker.keys()]) expect(key).not.toContain(sessionId);
});

test('the log lines of a turn carry its request, session and run IDs and never the message content', async () => {
  const sessionId = await stack.createSession();
  const marker = 'secret-marker-4f1c9';
  const requestId = 'req-log-check-1';
  const sent = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: `please repeat ${marker}` }, { 'x-request-id': requestId });
  expect(sent.status).toBe(202);
  expect(sent.headers.get('x-request-id')).toBe(requestId);
  const ws = await stack.ws(sessionId, '?after=0');
  await ws.waitFor((f) => f.type === 'turn.done');

  const json = (lines: string[]) => lines.flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
  await eventually(async () => json(stack.worker.lines).some((l) => l.msg === 'model reply committed' && l.sessionId === sessionId), 10_000, 'the turn log line');
  const turnLine = json(stack.worker.lines).find((l) => l.msg === 'model reply committed' && l.sessionId === sessionId)!;
  expect(turnLine).toMatchObject({ requestId, sessionId, workflowId: `session-${sessionId}`, turn: 1, finishReason: 'stop' });
  expect(turnLine.runId).toEqual(expect.any(String));
  const apiLines = json(stack.api.lines);
  expect(apiLines.find((l) => l.msg === 'request' && l.requestId === requestId)).toMatchObject({ method: 'POST', status: 202, sessionId });
  expect(apiLines.find((l) => l.msg === 'message accepted' && l.requestId === requestId)).toMatchObject({ sessionId, channel: 'rest' });
  for (const line of [...stack.worker.lines, ...stack.api.lines]) expect(line).not.toContain(marker);
});
