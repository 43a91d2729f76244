import { DEV_TOKEN, startStack, eventually, type Stack } from './support/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

const words = (n: number) => Array.from({ length: n }, (_, i) => `word${i}`).join(' ');

async function assistantMessages(sessionId: string) {
  const { rows } = await stack.db.query("SELECT content FROM messages WHERE session_id = $1 AND role = 'assistant'", [sessionId]);
  return rows.map((r) => r.content as string);
}

test('the worker is killed mid-stream and restarted: one reply, a restart marker, no duplicated text', async () => {
  const sessionId = await stack.createSession();
  const reply = words(40);
  stack.model.script(sessionId, { reply, tokenDelayMs: 60 });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'tell me a long story' });
  await ws.waitForCount((f) => f.type === 'stream.delta', 3);
  await stack.killWorker('SIGKILL');
  await stack.startWorker();
  await ws.waitFor((f) => f.type === 'turn.done', 40_000);

  expect(await assistantMessages(sessionId)).toEqual([reply]);
  const starts = ws.frames.filter((f) => f.type === 'stream.start');
  expect(starts.map((f) => f.data.attempt)).toEqual([1, 2]);
  const rendered = ws.replies().get('t1-s1')!;
  expect(rendered).toMatchObject({ attempt: 2, text: reply, restarts: 1 });
  expect(ws.frames.filter((f) => f.type === 'turn.done')).toHaveLength(1);
}, 60_000);

test('the provider cuts the stream mid-reply: the attempt is retried and only the full reply is stored', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { reply: words(12), failMidStreamNext: 1 });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'go' });
  const done = await ws.waitFor((f) => f.type === 'turn.done');
  expect(done.data).toMatchObject({ status: 'completed', content: words(12) });
  expect(ws.frames.filter((f) => f.type === 'stream.start').map((f) => f.data.attempt)).toEqual([1, 2]);
  expect(ws.replies().get('t1-s1')!.text).toBe(words(12));
  expect(await assistantMessages(sessionId)).toEqual([words(12)]);
});

test('the model fails twice with 429 then succeeds: one reply', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { failNext: { count: 2, status: 429 } });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'hi' });
  const done = await ws.waitFor((f) => f.type === 'turn.done');
  expect(done.data.status).toBe('completed');
  expect(ws.frames.some((f) => f.type === 'error')).toBe(false);
  expect(stack.model.requests(sessionId)).toHaveLength(3);
  expect(await assistantMessages(sessionId)).toEqual(['You said: hi.']);
});

test('the model fails with 400: an error event with its code, and the next message works', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { failNext: { count: 1, status: 400, message: 'bad request' } });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'first' });
  const error = await ws.waitFor((f) => f.type === 'error');
  expect(error.data).toMatchObject({ code: 'LLM_API_ERROR', recoverable: true, turn: 1 });
  expect(typeof error.seq).toBe('number');
  expect((await ws.waitFor((f) => f.type === 'turn.done')).data.status).toBe('failed');
  expect(stack.model.requests(sessionId)).toHaveLength(1);

  ws.send({ type: 'message', content: 'second' });
  await ws.waitForCount((f) => f.type === 'turn.done', 2);
  expect(ws.frames.filter((f) => f.type === 'turn.done')[1]!.data.status).toBe('completed');
});

test('content filter and rate limits map to their codes', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { contentFilter: true });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'something' });
  const error = await ws.waitFor((f) => f.type === 'error');
  expect(error.data).toMatchObject({ code: 'LLM_CONTENT_FILTER', recoverable: false });
  expect(stack.model.requests(sessionId)).toHaveLength(1);

  stack.model.script(sessionId, { contentFilter: false, failNext: { count: 10, status: 429 } });
  ws.send({ type: 'message', content: 'again' });
  const second = await ws.waitForCount((f) => f.type === 'error', 2, 30_000);
  expect(second[1]!.data).toMatchObject({ code: 'LLM_RATE_LIMIT', recoverable: true });
}, 40_000);

test('reconnect with after= receives exactly the missed events', async () => {
  const sessionId = await stack.createSession();
  const first = await stack.ws(sessionId);
  first.send({ type: 'message', content: 'one' });
  await first.waitFor((f) => f.type === 'message.accepted');
  const seen = first.frames.find((f) => f.type === 'message.accepted')!.seq!;
  await first.close();
  await eventually(async () => (await stack.db.query("SELECT 1 FROM session_events WHERE session_id = $1 AND type = 'turn.done'", [sessionId])).rowCount);

  const again = await stack.ws(sessionId, `?after=${seen}`);
  await again.waitFor((f) => f.type === 'turn.done');
  // A second turn on the new socket: everything of the first that the replay could still send
  // (twice, or late) would come before its events, so the sequence below has to be exact.
  again.send({ type: 'message', content: 'two' });
  await again.waitForCount((f) => f.type === 'turn.done', 2);
  const durable = again.frames.filter((f) => f.seq !== undefined);
  expect(durable.map((f) => [f.seq, f.type])).toEqual([
    [seen + 1, 'stream.start'],
    [seen + 2, 'stream.end'],
    [seen + 3, 'turn.done'],
    [seen + 4, 'message.accepted'],
    [seen + 5, 'stream.start'],
    [seen + 6, 'stream.end'],
    [seen + 7, 'turn.done'],
  ]);
  expect(again.frames[0]).toMatchObject({ type: 'connected', lastSeq: seen + 3 });
});

test('reconnect in the middle of a reply: the whole reply, no gap, no duplicate', async () => {
  const sessionId = await stack.createSession();
  const reply = words(30);
  stack.model.script(sessionId, { reply, tokenDelayMs: 40 });
  const first = await stack.ws(sessionId);
  first.send({ type: 'message', content: 'stream slowly' });
  await first.waitForCount((f) => f.type === 'stream.delta', 2);
  await first.close();
  const partial = first.replies().get('t1-s1')!.text;
  const lastSeen = Math.max(...first.frames.filter((f) => f.seq !== undefined).map((f) => f.seq!));

  const resumed = await stack.ws(sessionId, `?after=${lastSeen}&streamOffset=${partial.length}`);
  const late = await stack.ws(sessionId);
  await resumed.waitFor((f) => f.type === 'turn.done');
  await late.waitFor((f) => f.type === 'turn.done');

  const resumedText = resumed.frames.filter((f) => f.type === 'stream.delta').map((f) => f.data.text).join('');
  expect(partial + resumedText).toBe(reply);
  expect(resumed.frames.find((f) => f.type === 'stream.delta')!.data.offset).toBe(partial.length);
  expect(resumed.frames.filter((f) => f.type === 'stream.start')).toHaveLength(0);
  // A client that joins mid-reply with no cursor still gets the whole text, starting at offset 0.
  expect(late.frames.find((f) => f.type === 'stream.delta')!.data.offset).toBe(0);
  const lateText = late.frames.filter((f) => f.type === 'stream.delta').map((f) => f.data.text).join('');
  expect(lateText).toBe(reply);
});

async function readSse(url: string, headers: Record<string, string>, until: (events: SseEvent[]) => boolean, init: RequestInit = {}): Promise<SseEvent[]> {
  const controller = new AbortController();
  const res = await fetch(url, { ...init, headers: { authorization: `Bearer ${DEV_TOKEN}`, ...headers, ...(init.headers as Record<string, string>) }, signal: controller.signal });
  expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
  const events: SseEvent[] = [];
  const decoder = new TextDecoder();
  let buffer = '';
  const reader = res.body!.getReader();
  const deadline = Date.now() + 20_000;
  while (!until(events) && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let idx: number;
    while ((idx = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, idx);
      buffer = buffer.slice(idx + 2);
      const ev: SseEvent = { event: 'message', data: '' };
      for (const line of block.split('\n')) {
        if (line.startsWith('id: ')) ev.id = line.slice(4);
        else if (line.startsWith('event: ')) ev.event = line.slice(7);
        else if (line.startsWith('data: ')) ev.data += line.slice(6);
      }
      if (block.startsWith(':')) continue;
      events.push(ev);
    }
  }
  controller.abort();
  return events;
}
interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

test('SSE event stream resumes from Last-Event-ID', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'sse please' });
  await ws.waitFor((f) => f.type === 'turn.done');
  const events = await readSse(`${stack.base}/api/v1/sessions/${sessionId}/events`, { 'Last-Event-ID': '1' }, (evs) => evs.some((e) => e.event === 'turn.done'));
  // Durable events carry their seq as the SSE id; agent.status frames (derived, non-durable) carry none.
  const durable = events.filter((e) => e.event !== 'agent.status');
  expect(durable.map((e) => [e.id, e.event])).toEqual([
    ['2', 'stream.start'],
    ['3', 'stream.end'],
    ['4', 'turn.done'],
  ]);
  expect(events.filter((e) => e.event === 'agent.status').every((e) => e.id === undefined)).toBe(true);
  expect(JSON.parse(durable[2]!.data)).toMatchObject({ type: 'turn.done', seq: 4, sessionId });
});

test('POST /chat answers with stream:false and with stream:true', async () => {
  const sessionId = await stack.createSession();
  const plain = await stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'plain', stream: false });
  expect(plain.status).toBe(200);
  expect(plain.body).toMatchObject({ content: 'You said: plain.', toolCalls: [] });
  expect(typeof plain.body.messageId).toBe('string');

  stack.model.script(sessionId, { tokenDelayMs: 5 });
  const events = await readSse(`${stack.base}/api/v1/sessions/${sessionId}/chat`, { 'content-type': 'application/json' }, (evs) => evs.some((e) => e.event === 'done' || e.event === 'error'), {
    method: 'POST',
    body: JSON.stringify({ content: 'streamed', stream: true }),
  });
  const chunks = events.filter((e) => e.event === 'content');
  expect(chunks.length).toBeGreaterThan(1);
  const done = JSON.parse(events[events.length - 1]!.data);
  expect(events[events.length - 1]!.event).toBe('done');
  expect(chunks.map((c) => JSON.parse(c.data).content).join('')).toBe(done.content);
  expect(done.content).toContain('You said: streamed.');
});

test('a client that connects to an unknown session is refused', async () => {
  await expect(stack.ws('nope')).rejects.toThrow(/404/);
});
