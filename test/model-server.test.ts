import OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionMessageParam, ChatCompletionTool } from 'openai/resources/chat/completions';
import { LocalModelServer } from '../model-server/server';

let server: LocalModelServer;
let baseURL: string;
let client: OpenAI;

beforeAll(async () => {
  server = new LocalModelServer();
  ({ url: baseURL } = await server.start());
  client = new OpenAI({ baseURL, apiKey: 'test', maxRetries: 0 });
});
afterAll(async () => {
  await server.stop();
});
afterEach(() => server.reset());

const user = (content: string): ChatCompletionMessageParam => ({ role: 'user', content });
const calculator: ChatCompletionTool = {
  type: 'function',
  function: { name: 'calculator', parameters: { type: 'object', properties: { expression: { type: 'string' } } } },
};

async function collect(messages: ChatCompletionMessageParam[], extra: { user?: string } = {}) {
  const stream = await client.chat.completions.create({ model: 'any-model', messages, stream: true, stream_options: { include_usage: true }, ...extra });
  const chunks: ChatCompletionChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  return { chunks, text };
}

async function apiError(promise: Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof OpenAI.APIError)) throw new Error(`expected an APIError, got ${String(error)}`);
  return error;
}

async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('completions', () => {
  test('lists the local model', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['keel-local']);
  });

  test('streams the reply word by word, then the finish reason and a usage chunk', async () => {
    const { chunks, text } = await collect([user('hello there')]);
    expect(text).toBe('You said: hello there.');
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(chunks.filter((c) => c.choices[0]?.delta.content).map((c) => c.choices[0]!.delta.content)).toEqual(['You ', 'said: ', 'hello ', 'there.']);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === 'any-model')).toBe(true);
    const finish = chunks.find((c) => c.choices[0]?.finish_reason);
    expect(finish!.choices[0]!.finish_reason).toBe('stop');
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
  });

  test('answers without streaming', async () => {
    const completion = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [user('ping')] });
    expect(completion.object).toBe('chat.completion');
    expect(completion.choices[0]).toMatchObject({ finish_reason: 'stop', message: { role: 'assistant', content: 'You said: ping.' } });
    expect(completion.usage).toEqual({ prompt_tokens: 1, completion_tokens: 3, total_tokens: 4 });
  });

  test('the reply shows the context it was given', async () => {
    const { text } = await collect([user('My name is Ada'), { role: 'assistant', content: 'You said: My name is Ada.' }, user('What is my name?')]);
    expect(text).toBe('You said: What is my name?. Earlier you said: "My name is Ada". This is turn 2.');
  });

  test('a scripted reply is streamed with the scripted pacing', async () => {
    server.script('*', { reply: 'one two three', firstTokenDelayMs: 30, tokenDelayMs: 10 });
    const started = Date.now();
    const { text } = await collect([user('anything')]);
    expect(text).toBe('one two three');
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);
  });

  test('records every request in order, by scope', async () => {
    await collect([user('a')], { user: 's1' });
    await collect([user('b')], { user: 's2' });
    await collect([user('c')]);
    expect(server.requests().map((r) => r.body.messages[0].content)).toEqual(['a', 'b', 'c']);
    expect(server.requests('s2').map((r) => r.scope)).toEqual(['s2']);
    expect(server.requests('*')).toHaveLength(3);
  });
});

describe('scripted failures', () => {
  test('429 with retry-after, then success', async () => {
    server.script('*', { failNext: { count: 1, status: 429, retryAfterSeconds: 2 } });
    const error = await apiError(collect([user('hi')]));
    expect(error.status).toBe(429);
    expect(error.code).toBe('rate_limit_exceeded');
    expect(error.headers?.get('retry-after')).toBe('2');
    expect((await collect([user('hi')])).text).toBe('You said: hi.');
    expect(server.requests()).toHaveLength(2);
  });

  test('500 with an OpenAI-shaped body and the scripted message', async () => {
    server.script('*', { failNext: { count: 2, status: 500, message: 'boom' } });
    for (let i = 0; i < 2; i++) {
      const error = await apiError(client.chat.completions.create({ model: 'm', messages: [user('x')] }));
      expect(error.status).toBe(500);
      expect(error.error).toEqual({ message: 'boom', type: 'server_error', param: null, code: null });
    }
    await expect(client.chat.completions.create({ model: 'm', messages: [user('x')] })).resolves.toBeDefined();
  });

  test('content filter answers 400 with code content_filter until turned off', async () => {
    server.script('*', { contentFilter: true });
    for (let i = 0; i < 2; i++) {
      const error = await apiError(collect([user('x')]));
      expect(error).toMatchObject({ status: 400, code: 'content_filter', type: 'invalid_request_error' });
    }
    server.script('*', { contentFilter: false });
    expect((await collect([user('x')])).text).toBe('You said: x.');
  });

  test('a broken stream ends in an error after some content', async () => {
    server.script('*', { reply: 'a b c d e f', failMidStreamNext: 1 });
    const stream = await client.chat.completions.create({ model: 'm', messages: [user('x')], stream: true });
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const chunk of stream) seen.push(chunk.choices[0]?.delta.content ?? '');
      })(),
    ).rejects.toThrow();
    expect(seen.join('')).toBe('a b c ');
    expect((await collect([user('x')])).text).toBe('a b c d e f');
  });

  test('a hanging request is released when the client gives up', async () => {
    server.script('*', { hangNext: 1 });
    await expect(client.chat.completions.create({ model: 'm', messages: [user('x')] }, { timeout: 100 })).rejects.toThrow(OpenAI.APIConnectionError);
    expect((await collect([user('x')])).text).toBe('You said: x.');
  });

  test('a client that goes away mid-stream does not disturb the server', async () => {
    server.script('*', { reply: 'slow words here', tokenDelayMs: 50 });
    const controller = new AbortController();
    const stream = await client.chat.completions.create({ model: 'm', messages: [user('x')], stream: true }, { signal: controller.signal });
    const seen: string[] = [];
    for await (const chunk of stream) {
      seen.push(chunk.choices[0]?.delta.content ?? '');
      if (seen.join('')) controller.abort();
    }
    expect(seen.join('')).toBe('slow ');
    server.script('*', { tokenDelayMs: 0 });
    expect((await collect([user('x')])).text).toBe('slow words here');
  });

  test('an invalid script is refused where it is set', () => {
    expect(() => server.script('*', { failNext: { count: 1, status: 200 } })).toThrow(/Invalid model script.*failNext\.status/);
    expect(() => server.script('*', { hangNext: -1 })).toThrow(/hangNext/);
  });

  test('stop() ends hanging and slow requests', async () => {
    const own = new LocalModelServer({ defaults: { hangNext: 1, firstTokenDelayMs: 60_000 } });
    const { url } = await own.start();
    const ownClient = new OpenAI({ baseURL: url, apiKey: 'test', maxRetries: 0 });
    const hanging = ownClient.chat.completions.create({ model: 'm', messages: [user('x')] });
    const slow = ownClient.chat.completions.create({ model: 'm', messages: [user('y')], stream: true }).then(async (s) => {
      for await (const _ of s);
    });
    const outcomes = Promise.allSettled([hanging, slow]);
    await until(() => own.requests().length === 2, 'two recorded requests').catch(async (error: unknown) => {
      await own.stop();
      throw error;
    });
    const started = Date.now();
    await own.stop();
    const [hung, slowed] = await outcomes;
    expect(Date.now() - started).toBeLessThan(1000);
    expect(hung).toMatchObject({ status: 'rejected', reason: expect.any(OpenAI.APIConnectionError) });
    expect(slowed.status).toBe('rejected');
  });
});

describe('scopes', () => {
  test('a scoped script wins over *, field by field, and merges with earlier scripts', async () => {
    server.script('*', { reply: 'from star', failNext: { count: 1, status: 503 } });
    server.script('s1', { reply: 'from s1' });
    server.script('s1', { tokenDelayMs: 1 });
    expect((await apiError(collect([user('x')], { user: 's2' }))).status).toBe(503);
    expect((await collect([user('x')], { user: 's1' })).text).toBe('from s1');
    expect((await collect([user('x')], { user: 's2' })).text).toBe('from star');
  });

  test('counted scripts are consumed in the scope that set them', async () => {
    server.script('s1', { failNext: { count: 1, status: 429 } });
    expect((await collect([user('x')], { user: 's2' })).text).toBe('You said: x.');
    expect((await apiError(collect([user('x')], { user: 's1' }))).status).toBe(429);
    expect((await collect([user('x')], { user: 's1' })).text).toBe('You said: x.');
  });

  test('reset clears scripts and recorded requests but keeps the constructor defaults', async () => {
    const own = new LocalModelServer({ defaults: { reply: 'default' } });
    const { url } = await own.start();
    const ownClient = new OpenAI({ baseURL: url, apiKey: 'test', maxRetries: 0 });
    own.script('*', { reply: 'scripted' });
    const ask = async () => (await ownClient.chat.completions.create({ model: 'm', messages: [user('x')] })).choices[0]!.message.content;
    expect(await ask()).toBe('scripted');
    own.reset();
    expect(own.requests()).toEqual([]);
    expect(await ask()).toBe('default');
    await own.stop();
  });
});

describe('tools', () => {
  test('an arithmetic question with a calculator offered streams a tool call the client assembles', async () => {
    const stream = client.chat.completions.stream({ model: 'm', messages: [user('What is 15 + 27?')], tools: [calculator] });
    const argumentDeltas: string[] = [];
    stream.on('tool_calls.function.arguments.delta', (e) => argumentDeltas.push(e.arguments_delta));
    const completion = await stream.finalChatCompletion();
    const choice = completion.choices[0]!;
    expect(choice.finish_reason).toBe('tool_calls');
    expect(choice.message.tool_calls).toEqual([
      { id: expect.stringMatching(/^call_/), type: 'function', function: { name: 'calculator', arguments: '{"expression":"15 + 27"}' } },
    ]);
    expect(argumentDeltas.length).toBeGreaterThan(1);
  });

  test('scripted tool calls are one-shot, and several are streamed by index', async () => {
    server.script('*', { toolCalls: [{ name: 'search', arguments: '{"q":"keel"}' }, { id: 'call_x', name: 'lookup', arguments: '{}' }] });
    const completion = await client.chat.completions.stream({ model: 'm', messages: [user('go')] }).finalChatCompletion();
    expect(completion.choices[0]!.message.tool_calls!.map((c) => c.type === 'function' && [c.function.name, c.function.arguments])).toEqual([
      ['search', '{"q":"keel"}'],
      ['lookup', '{}'],
    ]);
    expect(completion.choices[0]!.message.tool_calls![1]!.id).toBe('call_x');
    expect((await collect([user('go')])).text).toBe('You said: go.');
  });

  const toolTurn = (content: string): ChatCompletionMessageParam[] => [
    user('What is 15 + 27?'),
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'calculator', arguments: '{"expression":"15 + 27"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content },
  ];

  test.each([
    ['{"result":42}', 'The result is 42.'],
    ['42', 'The result is 42.'],
    ['sunny and warm', 'Tool results: sunny and warm.'],
    ['Rejected by the approver. The tool did not run.', 'The action was not performed: Rejected by the approver. The tool did not run.'],
    // A tool's own data that says "cancelled" is a result, not a refusal.
    ['{"status":"cancelled"}', 'Tool results: {"status":"cancelled"}.'],
  ])('answers the tool result %s', async (content, reply) => {
    expect((await collect(toolTurn(content))).text).toBe(reply);
  });

  test('a tool call without its answer is rejected as OpenAI does', async () => {
    const messages = toolTurn('42').slice(0, 2).concat(user('and now?'));
    const error = await apiError(collect(messages, { user: 'bad' }));
    expect(error.status).toBe(400);
    expect(error.error).toMatchObject({ type: 'invalid_request_error', code: null });
    expect(error.message).toContain("responding to each 'tool_call_id'");
    expect(error.message).toContain('did not have response messages: call_1');
    expect(server.requests('bad')).toHaveLength(1);
  });

  test('a tool message that answers no tool call is rejected', async () => {
    const error = await apiError(collect([user('x'), { role: 'tool', tool_call_id: 'nope', content: '1' }]));
    expect(error).toMatchObject({ status: 400, param: 'messages.[1].role' });
  });
});

describe('bad input and control endpoints', () => {
  const json = async (response: Response): Promise<any> => response.json();
  const post = (path: string, body: string) => fetch(`${baseURL.replace(/\/v1$/, '')}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

  test('bad JSON, a bad request and an unknown route get OpenAI-shaped errors', async () => {
    const badJson = await post('/v1/chat/completions', '{"model":');
    expect(badJson.status).toBe(400);
    expect((await json(badJson)).error).toMatchObject({ type: 'invalid_request_error' });
    const noMessages = await post('/v1/chat/completions', JSON.stringify({ model: 'm', messages: [{ role: 'wizard', content: 'x' }] }));
    expect(noMessages.status).toBe(400);
    expect((await json(noMessages)).error.param).toBe('messages.[0].role');
    const unknown = await fetch(`${baseURL}/nope`);
    expect(unknown.status).toBe(404);
    expect((await json(unknown)).error.code).toBe('unknown_url');
    expect((await collect([user('still up')])).text).toBe('You said: still up.');
  });

  test('scripts, requests and reset over HTTP', async () => {
    const scripted = await post('/_control/script', JSON.stringify({ scope: 'remote', reply: 'over http', failNext: { count: 1, status: 502 } }));
    expect(await json(scripted)).toEqual({ ok: true, scope: 'remote' });
    expect((await apiError(collect([user('x')], { user: 'remote' }))).status).toBe(502);
    expect((await collect([user('x')], { user: 'remote' })).text).toBe('over http');
    await post('/_control/script', JSON.stringify({ scope: 'remote', reply: null }));
    expect((await collect([user('x')], { user: 'remote' })).text).toBe('You said: x.');

    const listed = await json(await fetch(`${baseURL.replace(/\/v1$/, '')}/_control/requests?scope=remote`));
    expect(listed.requests).toHaveLength(3);
    expect(listed.requests[0]).toMatchObject({ scope: 'remote', body: { user: 'remote' } });

    expect((await post('/_control/script', JSON.stringify({ hangNext: 'soon' }))).status).toBe(400);
    expect(await json(await post('/_control/reset', ''))).toEqual({ ok: true });
    expect(server.requests()).toEqual([]);
  });
});

describe('misbehaving on request', () => {
  const system = (content: string): ChatCompletionMessageParam => ({ role: 'system', content });

  async function streamed(model: string, messages: ChatCompletionMessageParam[], tools?: ChatCompletionTool[]) {
    const startedAt = Date.now();
    const stream = await client.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true }, ...(tools ? { tools } : {}) });
    const chunks: ChatCompletionChunk[] = [];
    let firstChunkMs: number | undefined;
    for await (const chunk of stream) {
      firstChunkMs ??= Date.now() - startedAt;
      chunks.push(chunk);
    }
    return {
      chunks,
      firstChunkMs: firstChunkMs ?? Infinity,
      text: chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''),
      finishReason: chunks.find((c) => c.choices[0]?.finish_reason)?.choices[0]?.finish_reason,
      toolCalls: chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? []),
      usageChunks: chunks.filter((c) => 'usage' in c),
    };
  }

  test.each([
    ['a system prompt marker', 'keel-local', [system('You help. [keel-misbehave: error]'), user('hi')]],
    ['the model name', 'keel-misbehave-error', [system('You help.'), user('hi')]],
  ])('error, asked by %s: every call answers 500 with an OpenAI-shaped body, streamed or not', async (_how, model, messages) => {
    for (let i = 0; i < 3; i++) {
      const error = await apiError(i % 2 ? client.chat.completions.create({ model, messages }) : streamed(model, messages));
      expect(error.status).toBe(500);
      expect(error.error).toEqual({ message: 'The server had an error while processing your request (keel-misbehave: error).', type: 'server_error', param: null, code: null });
    }
    expect(server.requests()).toHaveLength(3);
  });

  test('slow-<ms> holds back the first token that long; the same request without it answers at once', async () => {
    const messages = [system('You help. [keel-misbehave: slow-400]'), user('hi')];
    const slow = await streamed('keel-local', messages);
    expect(slow.firstChunkMs).toBeGreaterThanOrEqual(390);
    expect(slow.text).toBe('You said: hi.');
    const plain = await streamed('keel-local', [system('You help.'), user('hi')]);
    expect(plain.firstChunkMs).toBeLessThan(300);

    const startedAt = Date.now();
    await client.chat.completions.create({ model: 'keel-misbehave-slow-300', messages: [user('hi')] });
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(290);
  });

  test('wrong answers a fixed wrong text and never calls a tool, even for arithmetic with a calculator offered', async () => {
    const reply = await streamed('keel-local', [system('[keel-misbehave: wrong] You help.'), user('What is 15 + 27?')], [calculator]);
    expect(reply).toMatchObject({ text: 'I cannot help with that.', finishReason: 'stop', toolCalls: [] });
    const byName = await client.chat.completions.create({ model: 'keel-misbehave-wrong', messages: [user('What is 15 + 27?')], tools: [calculator] });
    expect(byName.choices[0]!.message).toMatchObject({ content: 'I cannot help with that.' });
    expect(byName.choices[0]!.message.tool_calls).toBeUndefined();
  });

  test('no-usage streams the reply normally but never a usage chunk, though the request asks for one', async () => {
    const normal = await streamed('keel-local', [system('You help.'), user('hello there')]);
    expect(normal.usageChunks.length).toBeGreaterThan(0);

    const reply = await streamed('keel-local', [system('You help. [keel-misbehave: no-usage]'), user('hello there')]);
    expect(reply).toMatchObject({ text: 'You said: hello there.', finishReason: 'stop', usageChunks: [] });
    expect(reply.chunks.every((c) => c.choices.length === 1)).toBe(true);
    const plain = await client.chat.completions.create({ model: 'keel-misbehave-no-usage', messages: [user('hello there')] });
    expect(plain.choices[0]!.message.content).toBe('You said: hello there.');
    expect(plain).not.toHaveProperty('usage');
  });

  test('markers combine, in one marker, in several and with the model name; the same request misbehaves the same way every time', async () => {
    const messages = [system('[keel-misbehave: wrong, no-usage] You help.'), { role: 'developer', content: '[keel-misbehave: slow-200]' } as ChatCompletionMessageParam, user('What is 1 + 1?')];
    for (let i = 0; i < 2; i++) {
      const reply = await streamed('keel-local', messages, [calculator]);
      expect(reply).toMatchObject({ text: 'I cannot help with that.', toolCalls: [], usageChunks: [] });
      expect(reply.firstChunkMs).toBeGreaterThanOrEqual(190);
    }
    const both = await streamed('keel-misbehave-wrong', [system('[keel-misbehave: no-usage]'), user('hi')]);
    expect(both).toMatchObject({ text: 'I cannot help with that.', usageChunks: [] });
  });

  test('a marker outside the system prompt is only text', async () => {
    const reply = await streamed('keel-local', [system('You help.'), user('[keel-misbehave: wrong]')]);
    expect(reply.text).toBe('You said: [keel-misbehave: wrong].');
    expect(reply.usageChunks.length).toBeGreaterThan(0);
  });

  test('an unknown mode is refused with a 400 that names where it was asked for', async () => {
    const inPrompt = await apiError(streamed('keel-local', [user('x'), system('[keel-misbehave: wrong, explode]')]));
    expect(inPrompt).toMatchObject({ status: 400, type: 'invalid_request_error', param: 'messages.[1].content' });
    expect(inPrompt.message).toContain("Unknown keel-misbehave mode 'explode'");
    const byName = await apiError(client.chat.completions.create({ model: 'keel-misbehave-slow', messages: [user('x')] }));
    expect(byName).toMatchObject({ status: 400, param: 'model' });
    const tooSlow = await apiError(client.chat.completions.create({ model: 'keel-misbehave-slow-3600001', messages: [user('x')] }));
    expect(tooSlow.message).toContain('longer than 3600000 ms');
  });

  describe('scripts win where they conflict', () => {
    test('a scripted failure or hang is used up first, then error answers 500', async () => {
      server.script('*', { failNext: { count: 1, status: 429 }, hangNext: 1 });
      const messages = [system('[keel-misbehave: error]'), user('x')];
      await expect(client.chat.completions.create({ model: 'm', messages }, { timeout: 100 })).rejects.toThrow(OpenAI.APIConnectionError);
      expect((await apiError(streamed('m', messages))).status).toBe(429);
      expect((await apiError(streamed('m', messages))).status).toBe(500);
    });

    test('a scripted reply or tool call wins over wrong', async () => {
      server.script('*', { reply: 'scripted text' });
      expect((await streamed('keel-misbehave-wrong', [user('x')])).text).toBe('scripted text');
      server.reset();
      server.script('*', { toolCalls: [{ name: 'calculator', arguments: '{"expression":"1 + 1"}' }] });
      const called = await streamed('keel-misbehave-wrong', [user('x')]);
      expect(called.toolCalls.map((c) => c.function?.name)).toEqual(['calculator']);
      expect((await streamed('keel-misbehave-wrong', [user('x')])).text).toBe('I cannot help with that.');
    });

    test('a scripted first-token delay wins over slow-<ms>', async () => {
      server.script('*', { firstTokenDelayMs: 0 });
      const reply = await streamed('keel-misbehave-slow-5000', [user('x')]);
      expect(reply.firstChunkMs).toBeLessThan(1_000);
      expect(reply.text).toBe('You said: x.');
    });
  });
});
