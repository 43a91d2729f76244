import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { sessionWorkflowId } from '../contracts/ids';
import { bundleWorkflows } from '../scripts/bundle-workflows';
import { exitCodeOf, formatSummary, replayCheck } from '../scripts/replay-check';
import { buildIncompatibleBundle } from './support/incompatible-bundle';
import { eventually, startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

/**
 * scripts/replay-check.ts against the real stack's Temporal: the live histories of two running
 * sessions (one idle after a plain turn, one waiting on an approval) replay on the bundle of the
 * working tree, and not on a bundle whose session workflow issues a command the real one never
 * did; the report names both sessions and the check fails.
 */

let stack: Stack;
let connection: Connection;
let client: Client;
let incompatible: Awaited<ReturnType<typeof buildIncompatibleBundle>> | undefined;
const of = (type: string) => (f: Frame) => f.type === type;

beforeAll(async () => {
  try {
    Runtime.install({ logger: new DefaultLogger('ERROR') });
  } catch {
    // Already installed in this process.
  }
  [stack, incompatible] = await Promise.all([startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } }), buildIncompatibleBundle('incompatible')]);
  connection = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS! });
  client = new Client({ connection, namespace: 'default' });
}, 60_000);

afterAll(async () => {
  await connection?.close();
  await stack?.stop();
  await incompatible?.cleanup();
});

let plain: string;
let pending: string;
/** This stack's running sessions only: the dev server is shared with other test files. */
let query: string;

beforeAll(async () => {
  plain = await stack.createSession();
  const ws = await stack.ws(plain);
  ws.send({ type: 'message', content: 'hello there' });
  expect((await ws.waitFor(of('turn.done'))).data).toMatchObject({ status: 'completed' });

  pending = await stack.createSession();
  stack.model.script(pending, { toolCalls: [{ name: 'create_note', arguments: JSON.stringify({ title: 'later', body: 'kept pending' }) }] });
  const ws2 = await stack.ws(pending);
  ws2.send({ type: 'message', content: 'save a note' });
  await ws2.waitFor(of('approval.required'));

  query = `WorkflowType = 'sessionWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '${stack.env.KEEL_TASK_QUEUE}'`;
  // Visibility lags the workflows a little.
  await eventually(async () => {
    let n = 0;
    for await (const _ of client.workflow.list({ query })) n++;
    return n === 2;
  }, 20_000, 'both sessions listed as running');
}, 60_000);

const ids = () => [sessionWorkflowId(plain), sessionWorkflowId(pending)].sort();

test('the live histories of an idle session and one waiting on an approval replay on the current bundle', async () => {
  const report = await replayCheck({ client, bundlePath: await bundleWorkflows(), query });
  expect(report.results.map((r) => r.workflowId).sort()).toEqual(ids());
  expect(report.results.map((r) => [r.status, r.error])).toEqual([
    ['ok', undefined],
    ['ok', undefined],
  ]);
  // The approval's history is the longer one: a model call, a tool call and a pending approval.
  expect(report.results.every((r) => (r.events ?? 0) > 5)).toBe(true);
  expect(report.counts).toEqual({ ok: 2, nondeterministic: 0, 'replay-failed': 0, 'fetch-failed': 0 });
  expect(exitCodeOf(report)).toBe(0);
  expect(formatSummary(report)).toContain('PASS');
});

test('a bundle whose session workflow issues another command fails the check and names both sessions', async () => {
  const report = await replayCheck({ client, bundlePath: incompatible!.bundlePath, query, concurrency: 1 });
  expect(report.results.map((r) => [r.workflowId, r.status]).sort()).toEqual(ids().map((id) => [id, 'nondeterministic']));
  for (const r of report.results) expect(r.error).toMatch(/nondeterminism/i);
  expect(exitCodeOf(report)).toBe(1);
  expect(formatSummary(report)).toContain('FAIL');
});

test('a history that cannot be fetched is reported apart from a replay failure, and --limit cuts the listing short', async () => {
  // A run that does not exist, next to one that does: checked by ID, as `--workflow-id <id>[:<runId>]` does.
  const missing = { workflowId: sessionWorkflowId(plain), runId: '00000000-0000-4000-8000-000000000000' };
  const report = await replayCheck({ client, bundlePath: await bundleWorkflows(), executions: [missing, { workflowId: sessionWorkflowId(pending) }], concurrency: 1 });
  expect(report.results).toEqual([
    expect.objectContaining({ ...missing, status: 'fetch-failed', error: expect.any(String) }),
    expect.objectContaining({ workflowId: sessionWorkflowId(pending), runId: expect.stringMatching(/^[0-9a-f-]{36}$/), status: 'ok' }),
  ]);
  expect(report.counts).toMatchObject({ ok: 1, 'fetch-failed': 1 });
  expect(exitCodeOf(report)).toBe(2);

  const limited = await replayCheck({ client, bundlePath: await bundleWorkflows(), query, limit: 1 });
  expect(limited.results).toHaveLength(1);
  expect(limited.truncated).toBe(true);
  expect(exitCodeOf(limited)).toBe(2);
});

test('a query the cluster refuses is an incomplete check, not a pass', async () => {
  const report = await replayCheck({ client, bundlePath: await bundleWorkflows(), query: 'NoSuchAttribute = 1' });
  expect(report.results).toEqual([]);
  expect(report.listError).toBeDefined();
  expect(exitCodeOf(report)).toBe(2);
});
