import { randomUUID } from 'node:crypto';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import type { PersistenceActivities, StreamReplyActivities, ToolActivities } from '../../activities';
import type { SessionAgent, SessionConfig, SessionWorkflowInput } from '../../contracts/session';
import type { ToolPolicy } from '../../contracts/turn';
import { bundleWorkflows } from '../../scripts/bundle-workflows';
import type { sessionWorkflow } from '../../workflows';

/** Every activity the session workflow calls, typed by the real contract: a double that drifts from it does not compile. */
export type SessionActivityDoubles = PersistenceActivities & StreamReplyActivities & ToolActivities;

/** A call an activity double saw, in the order the workflow made them. */
export interface Call {
  name: keyof SessionActivityDoubles;
  input: unknown;
}

export const READ_TOOL: ToolPolicy = { name: 'lookup', permission: 'read', requiresApproval: false, approvalTtlMs: 60_000, timeoutMs: 10_000, maxAttempts: 1 };
export const WRITE_TOOL: ToolPolicy = { name: 'save', permission: 'write', requiresApproval: false, approvalTtlMs: 60_000, timeoutMs: 10_000, maxAttempts: 1 };
export const APPROVED_WRITE_TOOL: ToolPolicy = { ...WRITE_TOOL, name: 'publish', requiresApproval: true };

export function sessionConfig(overrides: Partial<Omit<SessionConfig, 'agent'>> & { agent?: Partial<SessionAgent> } = {}): SessionConfig {
  const { agent, ...rest } = overrides;
  return {
    idleTtlMs: 60_000,
    continueAsNewAfterEvents: 4_000,
    maxQueuedMessages: 50,
    llm: { startToCloseTimeoutMs: 30_000, heartbeatTimeoutMs: 10_000, maxAttempts: 1, initialIntervalMs: 100, maximumIntervalMs: 100, backoffCoefficient: 1 },
    ...rest,
    agent: { id: 'a', version: 1, digest: 'd', busyPolicy: 'queue', maxStepsPerTurn: 4, model: 'm', tools: [READ_TOOL, WRITE_TOOL, APPROVED_WRITE_TOOL], ...agent },
  };
}

let installed = false;

/**
 * The session workflow alone, on the real Temporal dev server, with typed activity doubles in
 * place of Postgres and the model: for tests about the workflow's own decisions and races.
 */
export async function startWorkflowHarness(activities: SessionActivityDoubles) {
  const address = process.env.KEEL_TEST_TEMPORAL_ADDRESS;
  if (!address) throw new Error('KEEL_TEST_TEMPORAL_ADDRESS is not set: run through jest (npm test)');
  const taskQueue = `wf-${randomUUID()}`;
  // Once per jest worker process: the SDK's own lines only when something is wrong.
  if (!installed) {
    installed = true;
    try {
      Runtime.install({ logger: new DefaultLogger('WARN') });
    } catch {
      // Another test file in this jest worker already made the runtime; its logger stays.
    }
  }
  const nativeConnection = await NativeConnection.connect({ address });
  const worker = await Worker.create({
    connection: nativeConnection,
    taskQueue,
    workflowBundle: { codePath: await bundleWorkflows() },
    activities,
    // A stopped test worker gives up its running activities at once.
    shutdownGraceTime: 0,
  });
  const running = worker.run();
  const connection = await Connection.connect({ address });
  const client = new Client({ connection });
  return {
    client,
    async start(config: SessionConfig, sessionId = `s${randomUUID().replace(/-/g, '')}`): Promise<WorkflowHandle<typeof sessionWorkflow>> {
      const input: SessionWorkflowInput = { sessionId, config };
      return client.workflow.start<typeof sessionWorkflow>('sessionWorkflow', { taskQueue, workflowId: `wf-${sessionId}`, args: [input], workflowTaskTimeout: '2s' });
    },
    async stop() {
      worker.shutdown();
      await running;
      await connection.close();
      await nativeConnection.close();
    },
  };
}

/** A promise the test opens when it wants: to hold an activity at a point of its choosing. */
export function gate<T = void>() {
  let open!: (value: T) => void;
  const opened = new Promise<T>((resolve) => (open = resolve));
  return { open, opened };
}

/** Waits for an asynchronous condition (a query, a history read), failing with `what` after `timeoutMs`. */
export async function eventually(check: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits for a condition the test can observe, failing with `what` after `timeoutMs`. */
export async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
