import path from 'node:path';
import { Client, Connection, type WorkflowExecutionDescription } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { sessionWorkflowId } from '../contracts/ids';
import { loadSettings } from '../config/settings';
import { replayCheck } from '../scripts/replay-check';
import { BUILD_MEMO_KEY, buildIncompatibleBundle } from './support/incompatible-bundle';
import { spawnEntry, type Spawned } from './support/processes';
import { eventually, startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

/**
 * Worker Versioning on the jest dev server (Temporal CLI 1.9.1, Server 1.32: Worker Deployments,
 * pinned workflows and the target-version-changed flag need no dynamic config). Build A is the
 * real workflow code; build B is a copy whose session workflow first issues a command A never
 * does (test/support/incompatible-bundle.ts), so no A history replays on B. A session waiting on
 * an approval when B becomes current is finished by A, then continues-as-new onto B; new
 * sessions start on B.
 */

const DEPLOYMENT = `keel-wv-${process.pid}`;
const { VersioningBehavior, RoutingConfigUpdateState, EventType } = temporal.api.enums.v1;

let stack: Stack;
let connection: Connection;
let client: Client;
let bundleB: Awaited<ReturnType<typeof buildIncompatibleBundle>> | undefined;
let workerB: Spawned | undefined;
const of = (type: string) => (f: Frame) => f.type === type;

/** Makes `buildId` current once its workers poll, and waits until every task queue partition knows it. */
async function makeCurrent(buildId: string): Promise<void> {
  await eventually(async () => {
    try {
      await connection.workflowService.setWorkerDeploymentCurrentVersion({ namespace: 'default', deploymentName: DEPLOYMENT, buildId, identity: 'worker-versioning.test' });
      return true;
    } catch {
      // NOT_FOUND / FAILED_PRECONDITION until the version's workers have polled.
      return false;
    }
  }, 20_000, `${buildId} set current`);
  await eventually(async () => {
    const { workerDeploymentInfo: info } = await connection.workflowService.describeWorkerDeployment({ namespace: 'default', deploymentName: DEPLOYMENT });
    return info?.routingConfig?.currentDeploymentVersion?.buildId === buildId && info.routingConfigUpdateState === RoutingConfigUpdateState.ROUTING_CONFIG_UPDATE_STATE_COMPLETED;
  }, 20_000, `${buildId} current on every partition`);
}

function versionOf(d: WorkflowExecutionDescription) {
  const info = d.raw.workflowExecutionInfo?.versioningInfo;
  return { buildId: info?.deploymentVersion?.buildId, behavior: info?.behavior };
}

/** The build ID of each completed workflow task, in order. */
async function taskBuilds(workflowId: string, runId: string): Promise<string[]> {
  const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
  return (history.events ?? []).filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED).map((e) => e.workflowTaskCompletedEventAttributes?.deploymentVersion?.buildId ?? '');
}

beforeAll(async () => {
  try {
    Runtime.install({ logger: new DefaultLogger('ERROR') });
  } catch {
    // Already installed in this process.
  }
  [stack, bundleB] = await Promise.all([
    startStack({ env: { KEEL_DEPLOYMENT_NAME: DEPLOYMENT, KEEL_BUILD_ID: 'A', KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } }),
    buildIncompatibleBundle('B'),
  ]);
  connection = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS! });
  client = new Client({ connection, namespace: 'default' });
  // A first deploy: nothing runs until an operator (here the test) makes a version current.
  await makeCurrent('A');
}, 60_000);

afterAll(async () => {
  await workerB?.kill();
  await connection?.close();
  await stack?.stop();
  await bundleB?.cleanup();
});

test('a session waiting on an approval is finished by build A after B becomes current, then moves to B; new sessions run on B', async () => {
  // On A: a write tool waits for approval.
  const s1 = await stack.createSession();
  const w1 = sessionWorkflowId(s1);
  stack.model.script(s1, { toolCalls: [{ name: 'create_note', arguments: JSON.stringify({ title: 'pinned note', body: 'asked on A' }) }] });
  const ws1 = await stack.ws(s1);
  ws1.send({ type: 'message', content: 'save a note' });
  const required = await ws1.waitFor(of('approval.required'));
  const firstRun = await client.workflow.getHandle(w1).describe();
  expect(versionOf(firstRun)).toEqual({ buildId: 'A', behavior: VersioningBehavior.VERSIONING_BEHAVIOR_PINNED });

  // Before retiring a version: its pinned runs are found by their version, and none replays on B's code.
  const pinnedToA = `TemporalWorkerDeploymentVersion = '${DEPLOYMENT}:A' AND ExecutionStatus = 'Running' AND TaskQueue = '${stack.env.KEEL_TASK_QUEUE}'`;
  const check = await eventually(async () => {
    const report = await replayCheck({ client, bundlePath: bundleB!.bundlePath, query: pinnedToA });
    return report.results.length > 0 ? report : undefined;
  }, 20_000, 'the run pinned to A listed by its version');
  expect(check.results.map((r) => [r.workflowId, r.status])).toEqual([[w1, 'nondeterministic']]);

  // Build B deploys beside A and becomes current.
  workerB = spawnEntry('worker/main.ts', { ...stack.env, KEEL_BUILD_ID: 'B', KEEL_WORKFLOW_BUNDLE: bundleB!.bundlePath });
  await workerB.waitForLine(/worker started/);
  await makeCurrent('B');

  // The decision reaches the run pinned to A: A runs the tool and the reply.
  const decided = await stack.request('POST', `/api/v1/sessions/${s1}/approvals/${required.data.toolCallId}`, { approved: true });
  expect(decided.status).toBe(200);
  expect((await ws1.waitFor(of('turn.done'))).data).toMatchObject({ status: 'completed' });
  const { rows } = await stack.db.query('SELECT title FROM notes WHERE session_id = $1', [s1]);
  expect(rows).toEqual([{ title: 'pinned note' }]);

  // Every task of that run, the decision's and the continue-as-new's included, was completed by A,
  // and none failed; the run continued-as-new onto the current build.
  // turn.done is written by an activity: the run closes just after it.
  await eventually(async () => (await client.workflow.getHandle(w1, firstRun.runId).describe()).status.name === 'CONTINUED_AS_NEW', 20_000, 'the first run continued-as-new');
  const firstHistory = await client.workflow.getHandle(w1, firstRun.runId).fetchHistory();
  const events = firstHistory.events ?? [];
  expect(events.some((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)).toBe(true);
  expect(events.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)).toEqual([]);
  expect(new Set(await taskBuilds(w1, firstRun.runId))).toEqual(new Set(['A']));
  const last = events[events.length - 1]!;
  expect(last.eventType).toBe(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW);

  // Had that run moved to B instead, B could not have replayed it: the change is incompatible.
  await expect(Worker.runReplayHistory({ workflowBundle: { codePath: bundleB!.bundlePath } }, firstHistory, w1)).rejects.toMatchObject({ name: 'DeterminismViolationError' });

  // The next run is B's (a pinned run that continues-as-new without AUTO_UPGRADE stays on its build):
  // pinned there, started by B's code (its memo), and it answers the next turn.
  const secondRun = await eventually(async () => {
    const d = await client.workflow.getHandle(w1).describe();
    return d.runId !== firstRun.runId && versionOf(d).buildId === 'B' ? d : undefined;
  }, 20_000, 'the next run on B');
  expect(versionOf(secondRun)).toEqual({ buildId: 'B', behavior: VersioningBehavior.VERSIONING_BEHAVIOR_PINNED });
  expect(secondRun.memo?.[BUILD_MEMO_KEY]).toBe('B');
  ws1.send({ type: 'message', content: 'and now?' });
  expect((await ws1.waitForCount(of('turn.done'), 2))[1]!.data).toMatchObject({ status: 'completed' });
  expect(new Set(await taskBuilds(w1, secondRun.runId))).toEqual(new Set(['B']));

  // A new session starts on B.
  const s2 = await stack.createSession();
  const ws2 = await stack.ws(s2);
  ws2.send({ type: 'message', content: 'hello' });
  expect((await ws2.waitFor(of('turn.done'))).data).toMatchObject({ status: 'completed' });
  const newRun = await client.workflow.getHandle(sessionWorkflowId(s2)).describe();
  expect(versionOf(newRun)).toEqual({ buildId: 'B', behavior: VersioningBehavior.VERSIONING_BEHAVIOR_PINNED });
  expect(newRun.memo?.[BUILD_MEMO_KEY]).toBe('B');
  expect(new Set(await taskBuilds(sessionWorkflowId(s2), newRun.runId))).toEqual(new Set(['B']));
}, 90_000);

test('versioning is off unless both KEEL_DEPLOYMENT_NAME and KEEL_BUILD_ID are set', () => {
  expect(loadSettings({}).temporal.deployment).toBeUndefined();
  expect(loadSettings({ KEEL_DEPLOYMENT_NAME: 'keel', KEEL_BUILD_ID: '1.4.0' }).temporal.deployment).toEqual({ deploymentName: 'keel', buildId: '1.4.0' });
  expect(() => loadSettings({ KEEL_DEPLOYMENT_NAME: 'keel' })).toThrow(/KEEL_BUILD_ID/);
  expect(() => loadSettings({ KEEL_BUILD_ID: '1.4.0' })).toThrow(/KEEL_DEPLOYMENT_NAME/);
  expect(() => loadSettings({ KEEL_DEPLOYMENT_NAME: 'keel.prod', KEEL_BUILD_ID: '1' })).toThrow(/must not contain "."/);
});
