import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { bundleWorkflows } from '../scripts/bundle-workflows';
import { startStack, eventually, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';
import { tracingWorkerOptions } from '../worker/tracing';

/** One span as the OTLP/HTTP JSON exporter sends it, flattened. */
interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  attributes: Record<string, unknown>;
}

interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
interface OtlpAttribute {
  key: string;
  value: OtlpValue;
}
interface OtlpTraces {
  resourceSpans?: {
    resource?: { attributes?: OtlpAttribute[] };
    scopeSpans?: { spans?: { traceId: string; spanId: string; parentSpanId?: string; name: string; attributes?: OtlpAttribute[] }[] }[];
  }[];
}

const attributesOf = (list: OtlpAttribute[] = []) => Object.fromEntries(list.map((a) => [a.key, a.value.stringValue ?? a.value.intValue ?? a.value.boolValue ?? a.value.doubleValue]));

/**
 * A stand-in OTLP collector: accepts POST <its own random prefix>/v1/traces (JSON) and keeps every
 * span. The prefix keeps out spans of any other process that exports to a port this one reused.
 */
async function startReceiver() {
  const spans: ReceivedSpan[] = [];
  const prefix = `/r${Math.random().toString(36).slice(2)}`;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== `${prefix}/v1/traces` || !String(req.headers['content-type']).includes('json')) {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString()) as OtlpTraces;
      for (const rs of body.resourceSpans ?? []) {
        const service = String(attributesOf(rs.resource?.attributes)['service.name']);
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) {
            spans.push({ service, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId ?? '', name: s.name, attributes: attributesOf(s.attributes) });
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}${prefix}`,
    spans,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

let receiver: Awaited<ReturnType<typeof startReceiver>>;
let stack: Stack;
/** Exporting to the receiver (or nowhere), whatever OTEL_* variables the shell running jest has. */
const otelEnv = (endpoint: string, batchDelayMs = 100) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '', OTEL_BSP_SCHEDULE_DELAY: String(batchDelayMs) });
beforeAll(async () => {
  receiver = await startReceiver();
  stack = await startStack({ env: { ...otelEnv(receiver.url), KEEL_WORKFLOW_BUNDLE: await bundleWorkflows({ tracing: true }) } });
});
afterAll(async () => {
  await stack?.stop();
  await receiver?.close();
});

const of = (type: string) => (f: Frame) => f.type === type;

/**
 * The whole trace of the span called `name` of this session's workflow, once it has arrived with
 * every span's parent: spans come in batches from two processes, and a span that ends later (a
 * StartActivity ends after its RunActivity) can come in a later batch.
 */
async function wholeTrace(sessionId: string, name: string, complete: (spans: ReceivedSpan[]) => boolean) {
  const span = await eventually(
    async () => receiver.spans.find((s) => s.name === name && s.attributes.temporalWorkflowId === `session-${sessionId}`),
    30_000,
    `span ${name}`,
  );
  return eventually(
    async () => {
      const spans = receiver.spans.filter((s) => s.traceId === span.traceId);
      const ids = new Set(spans.map((s) => s.spanId));
      return spans.every((s) => s.parentSpanId === '' || ids.has(s.parentSpanId)) && complete(spans) ? spans : undefined;
    },
    30_000,
    `the whole trace of ${name}`,
  );
}

const count = (spans: ReceivedSpan[], name: string) => spans.filter((s) => s.name === name).length;

/** The span named `name` in `spans`, whose parent is `parent`. */
function child(spans: ReceivedSpan[], parent: ReceivedSpan, name: string): ReceivedSpan {
  const found = spans.find((s) => s.name === name && s.parentSpanId === parent.spanId);
  if (!found) throw new Error(`no ${name} under ${parent.name}; trace has ${spans.map((s) => `${s.name}(${s.spanId}<-${s.parentSpanId})`).join(', ')}`);
  return found;
}

test('a WebSocket message is one trace: frame span, signal, workflow, LLM activity', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'trace me' });
  await ws.waitFor(of('turn.done'));

  const spans = await wholeTrace(sessionId, 'RunActivity:streamReply', (all) => count(all, 'WS message') === 1);

  const frame = spans.find((s) => s.name === 'WS message')!;
  expect(frame).toMatchObject({ service: 'keel-api', parentSpanId: '', attributes: { 'keel.session_id': sessionId } });
  const signal = child(spans, frame, 'SignalWorkflow:userMessage');
  expect(signal.service).toBe('keel-api');
  const handled = child(spans, signal, 'HandleSignal:userMessage');
  const start = child(spans, handled, 'StartActivity:streamReply');
  const run = child(spans, start, 'RunActivity:streamReply');
  for (const s of [handled, start, run]) expect(s.service).toBe('keel-worker');
  expect(run.attributes).toMatchObject({ temporalWorkflowId: `session-${sessionId}` });
});

test('creating a session over REST traces the request into the workflow start', async () => {
  const sessionId = await stack.createSession();
  const started = await eventually(
    async () => receiver.spans.find((s) => s.name === 'StartWorkflow:sessionWorkflow' && s.attributes.temporalWorkflowId === `session-${sessionId}`),
    30_000,
    'StartWorkflow span',
  );
  const request = receiver.spans.find((s) => s.spanId === started.parentSpanId);
  expect(request).toMatchObject({ service: 'keel-api', name: 'POST /api/v1/sessions', traceId: started.traceId, attributes: { 'http.route': '/api/v1/sessions', 'http.response.status_code': 201 } });
});

test('a tool turn sent over REST: the request trace reaches the calculator activity', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const sent = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'What is 15 + 27?' });
  expect(sent.status).toBe(202);
  const done = await ws.waitFor(of('turn.done'));
  // The error frame, if any, names why a turn failed (seen once in CI under load).
  expect({ status: done.data.status, error: ws.frames.find(of('error'))?.data }).toEqual({ status: 'completed', error: undefined });
  expect(done.data.content).toContain('42');

  const spans = await wholeTrace(sessionId, 'RunActivity:executeTool', (all) => count(all, 'RunActivity:streamReply') === 2);
  const request = spans.find((s) => s.name === 'POST /api/v1/sessions/:id/messages')!;
  expect(request).toMatchObject({ service: 'keel-api', parentSpanId: '', attributes: { 'http.response.status_code': 202 } });
  const handled = child(spans, child(spans, request, 'SignalWorkflow:userMessage'), 'HandleSignal:userMessage');
  // The model asks for the tool, the tool runs, the model answers: all in the message's trace.
  const modelCalls = spans.filter((s) => s.name === 'StartActivity:streamReply' && s.parentSpanId === handled.spanId);
  expect(modelCalls).toHaveLength(2);
  for (const call of modelCalls) child(spans, call, 'RunActivity:streamReply');
  const tool = child(spans, child(spans, handled, 'StartActivity:executeTool'), 'RunActivity:executeTool');
  expect(tool.service).toBe('keel-worker');
});

// Same-code replay: a history made seconds ago by this very code, replayed with and without the
// tracing interceptors. It shows the interceptors add no commands; it is NOT versioning coverage
// (a change to the workflow's commands replays here too). That is test/replay.test.ts, over the
// histories saved in test/histories (docs/design/002-workflow-versioning.md).
test('tracing interceptors add no commands: a fresh traced history replays on the traced and untraced bundles (same code)', async () => {
  const { Client, Connection } = await import('@temporalio/client');
  const { DefaultLogger, Runtime, Worker } = await import('@temporalio/worker');
  try {
    Runtime.install({ logger: new DefaultLogger('WARN') });
  } catch {
    // Already installed in this process: its logger stays.
  }
  const connection = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS! });
  try {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'What is 15 + 27?' });
    await ws.waitFor(of('turn.done'));
    const history = await new Client({ connection }).workflow.getHandle(`session-${sessionId}`).fetchHistory();
    // Throws on any divergence from the recorded commands.
    await Worker.runReplayHistory({ workflowBundle: { codePath: stack.env.KEEL_WORKFLOW_BUNDLE! }, sinks: tracingWorkerOptions(undefined).sinks }, history);
    // And without the interceptors: switching tracing off never breaks a running session.
    await Worker.runReplayHistory({ workflowBundle: { codePath: await bundleWorkflows() } }, history);
  } finally {
    await connection.close();
  }
});

test('only requests start traces: probes, scrapes and background queries make no spans', async () => {
  expect((await stack.request('GET', '/metrics')).status).toBe(200);
  await stack.request('GET', '/api/v1/health');
  const sessionId = await stack.createSession();
  // The session's spans are exported after the probes': once they are in, the probes' would be too.
  await eventually(async () => receiver.spans.some((s) => s.name === 'StartWorkflow:sessionWorkflow' && s.attributes.temporalWorkflowId === `session-${sessionId}`), 30_000, 'StartWorkflow span');
  expect(receiver.spans.filter((s) => ['/metrics', '/api/v1/health'].includes(String(s.attributes['url.path'])))).toEqual([]);
  const roots = receiver.spans.filter((s) => s.parentSpanId === '');
  expect(roots.length).toBeGreaterThan(0);
  for (const root of roots) expect(root.name).toMatch(/^(GET|POST|DELETE) \/|^WS /);
});

test('without an OTLP endpoint tracing is off and turns still run', async () => {
  const untraced = await startStack({ env: otelEnv('') });
  try {
    const sessionId = await untraced.createSession();
    const ws = await untraced.ws(sessionId);
    ws.send({ type: 'message', content: 'What is 15 + 27?' });
    expect((await ws.waitFor(of('turn.done'))).data.content).toContain('42');
    const lines = [...untraced.worker.lines, ...untraced.api.lines];
    expect(lines.filter((l) => /unregistered external sink|trace_id/.test(l))).toEqual([]);

    // Switching tracing on later must not break this session: its history replays on the traced bundle.
    // Same-code replay, about the interceptors only; versioning coverage is test/replay.test.ts.
    const { Client, Connection } = await import('@temporalio/client');
    const { Worker } = await import('@temporalio/worker');
    const connection = await Connection.connect({ address: untraced.env.TEMPORAL_ADDRESS! });
    try {
      const history = await new Client({ connection }).workflow.getHandle(`session-${sessionId}`).fetchHistory();
      await Worker.runReplayHistory({ workflowBundle: { codePath: await bundleWorkflows({ tracing: true }) }, sinks: tracingWorkerOptions(undefined).sinks }, history);
    } finally {
      await connection.close();
    }
  } finally {
    await untraced.stop();
  }
}, 120_000);

test('spans still buffered at SIGTERM are exported on the way out', async () => {
  // A batch delay far beyond the test: these spans can only leave at shutdown.
  const buffered = await startStack({ env: { ...otelEnv(receiver.url, 600_000), KEEL_WORKFLOW_BUNDLE: await bundleWorkflows({ tracing: true }) } });
  let sessionId = '';
  try {
    sessionId = await buffered.createSession();
    const ws = await buffered.ws(sessionId);
    ws.send({ type: 'message', content: 'flush me' });
    await ws.waitFor(of('turn.done'));
  } finally {
    await buffered.stop();
  }
  const names = receiver.spans.filter((s) => s.attributes.temporalWorkflowId === `session-${sessionId}` || s.attributes['keel.session_id'] === sessionId).map((s) => s.name);
  expect(names).toEqual(expect.arrayContaining(['StartWorkflow:sessionWorkflow', 'WS message', 'SignalWorkflow:userMessage', 'RunActivity:streamReply']));
}, 120_000);
