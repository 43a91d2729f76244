import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { releaseHealthScheduleId } from '../contracts/releases';
import { PROBE_USER } from '../releases/probe';
import { eventually, startStack, type Stack } from './support/stack';

/**
 * Agent versions as releases, and the health check that rolls a bad one back on its own: a real
 * Temporal Schedule and watch workflow, real probes against the local model, real rollbacks.
 */

const CHECK_INTERVAL_MS = 2_000;
const BROKEN = '[keel-misbehave: error]';

let stack: Stack;
let admin: string;
let temporal: Connection;
let client: Client;

beforeAll(async () => {
  stack = await startStack({
    env: {
      KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/releases-agents.yaml'),
      KEEL_HEALTH_CHECKS_ENABLED: 'true',
      KEEL_HEALTH_CHECK_INTERVAL_MS: String(CHECK_INTERVAL_MS),
      KEEL_HEALTH_PROBE_ATTEMPTS: '1',
      KEEL_HEALTH_MIN_SAMPLE: '3',
      KEEL_HEALTH_WINDOW_MS: '120000',
      KEEL_RELEASE_WATCH_MS: '20000',
      KEEL_RELEASE_WATCH_INTERVAL_MS: '1000',
      KEEL_LLM_MAX_ATTEMPTS: '2',
    },
  });
  admin = await stack.issueToken('ops', true);
  temporal = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS });
  client = new Client({ connection: temporal });
});
afterAll(async () => {
  // The Schedule outlives the stack on the shared server: remove it.
  await client?.schedule.getHandle(releaseHealthScheduleId(stack.env.KEEL_TASK_QUEUE!)).delete().catch(() => undefined);
  await temporal?.close();
  await stack?.stop();
});

const asAdmin = (method: string, p: string, body?: unknown) => stack.request(method, p, body, { authorization: `Bearer ${admin}` });
const schedule = () => client.schedule.getHandle(releaseHealthScheduleId(stack.env.KEEL_TASK_QUEUE!));

async function definition(agentId: string) {
  const res = await asAdmin('GET', `/api/v1/agents/${agentId}/versions`);
  expect(res.status).toBe(200);
  return { ...res.body.versions.find((v: { version: number }) => v.version === res.body.release.activeVersion).definition };
}

async function publish(agentId: string, changes: Record<string, unknown>): Promise<number> {
  const res = await asAdmin('POST', `/api/v1/agents/${agentId}/versions`, { ...(await definition(agentId)), ...changes });
  expect(res.status).toBe(201);
  expect(res.body).toMatchObject({ agentId, created: true, status: 'published' });
  return res.body.version as number;
}

const release = async (agentId: string) => (await asAdmin('GET', `/api/v1/agents/${agentId}/versions`)).body;
const versionOfNewSession = async (agentId = 'default') => {
  const id = await stack.createSession({ agentId });
  return { id, version: (await stack.request('GET', `/api/v1/sessions/${id}`)).body.agentVersion as number };
};

test('the definitions file seeds version 1 as the active release, and the Schedule exists', async () => {
  const body = await release('default');
  expect(body.release).toMatchObject({ activeVersion: 1, canaryVersion: null });
  expect(body.versions).toEqual([expect.objectContaining({ version: 1, status: 'active', publishedBy: 'agents-file' })]);
  expect(body.audit.map((a: { action: string }) => a.action)).toEqual(['activate', 'publish']);
  const described = await schedule().describe();
  expect(described.action).toMatchObject({ type: 'startWorkflow', workflowType: 'releaseHealthWorkflow', taskQueue: stack.env.KEEL_TASK_QUEUE });
  expect(described.spec.intervals?.[0]?.every).toBe(CHECK_INTERVAL_MS);
});

test('release changes are for admins, and a definition is validated like the file', async () => {
  for (const [method, p, body] of [
    ['GET', '/api/v1/agents/default/versions', undefined],
    ['POST', '/api/v1/agents/default/versions', { name: 'x', systemPrompt: 'x' }],
    ['POST', '/api/v1/agents/default/activate', { version: 1 }],
    ['POST', '/api/v1/agents/default/rollback', { reason: 'x' }],
    ['GET', '/api/v1/incidents', undefined],
  ] as const) {
    const res = await stack.request(method, p, body);
    expect([p, res.status, res.body.error.code]).toEqual([p, 403, 'FORBIDDEN']);
  }
  const bad = await asAdmin('POST', '/api/v1/agents/default/versions', { name: 'x', systemPrompt: 'x', busyPolicy: 'sometimes', maxStepsPerTurn: 0 });
  expect(bad.status).toBe(422);
  expect(bad.body.error.details.map((d: { field: string }) => d.field).sort()).toEqual(['busyPolicy', 'maxStepsPerTurn']);
  const badProbe = await asAdmin('POST', '/api/v1/agents/default/versions', { name: 'x', systemPrompt: 'x', tools: ['calculator'], healthChecks: [{ name: 'p', prompt: 'hi', expect: { toolCalled: 'create_note' } }, { name: 'q', prompt: 'hi', expect: {} }] });
  expect(badProbe.status).toBe(422);
  expect(badProbe.body.error.details.map((d: { field: string }) => d.field).sort()).toEqual(['healthChecks.0.expect.toolCalled', 'healthChecks.1.expect']);
  const unknownTool = await asAdmin('POST', '/api/v1/agents/default/versions', { name: 'x', systemPrompt: 'x', tools: ['teleport'] });
  expect(unknownTool.status).toBe(422);
  expect(unknownTool.body.error.details).toEqual([{ field: 'tools', problem: expect.stringContaining('unknown tool "teleport"') }]);
  const otherId = await asAdmin('POST', '/api/v1/agents/default/versions', { id: 'plain', name: 'x', systemPrompt: 'x' });
  expect(otherId.body.error.details[0].field).toBe('id');
  expect((await asAdmin('POST', '/api/v1/agents/default/activate', { version: 99 })).body.error.code).toBe('VERSION_NOT_FOUND');
  expect((await asAdmin('POST', '/api/v1/agents/plain/rollback', { reason: 'nothing before it' })).body.error.code).toBe('NO_PREVIOUS_VERSION');
  // The same definition again is the same version.
  const again = await asAdmin('POST', '/api/v1/agents/plain/versions', await definition('plain'));
  expect(again.status).toBe(200);
  expect(again.body).toMatchObject({ created: false, version: 1 });
});

test('the Schedule\'s check finds a broken release, rolls it back to v1, writes an incident and moves its sessions', async () => {
  const base = await definition('default');
  const broken = await publish('default', { systemPrompt: `${base.systemPrompt} ${BROKEN}` });
  // No watch: the Schedule alone must find it.
  const activated = await asAdmin('POST', '/api/v1/agents/default/activate', { version: broken, reason: 'new prompt', watch: false });
  expect(activated.status).toBe(200);
  expect(activated.body).toMatchObject({ release: { activeVersion: broken }, audit: { action: 'activate', fromVersion: 1, toVersion: broken, actor: 'ops', reason: 'new prompt' }, watch: null });
  const onBroken = await versionOfNewSession();
  expect(onBroken.version).toBe(broken);

  const rolledBack = await eventually(async () => {
    const body = await release('default');
    return body.release.activeVersion === 1 ? body : null;
  }, 30_000, 'the rollback');
  expect(rolledBack.versions.find((v: { version: number }) => v.version === broken).status).toBe('rolled_back');
  const [rollback, activation] = rolledBack.audit;
  expect(rollback).toMatchObject({ action: 'auto_rollback', fromVersion: broken, toVersion: 1, actor: 'health-check', reason: expect.stringContaining('probe:arithmetic') });
  expect(activation).toMatchObject({ action: 'activate', toVersion: broken });
  const activationToRollbackMs = Date.parse(rollback.at) - Date.parse(activation.at);
  // Detection waits for the next tick of the Schedule (every 2 s) and one failing probe.
  expect(activationToRollbackMs).toBeLessThan(3 * CHECK_INTERVAL_MS + 5_000);

  // The incident is written right after the rollback commits.
  const incidents = await eventually(async () => {
    const found = (await asAdmin('GET', '/api/v1/incidents?kind=release_rolled_back')).body.incidents;
    return found.length > 0 ? found : null;
  }, 10_000, 'the incident');
  expect(incidents).toHaveLength(1);
  const [incident] = incidents;
  expect(incident).toMatchObject({ agentId: 'default', version: broken, affectedSessions: 1, evidence: { failed: ['probe:arithmetic'], rolledBackTo: 1, role: 'active' } });
  expect(Date.parse(incident.detectedAt)).toBeLessThanOrEqual(Date.parse(incident.decidedAt));
  expect(Date.parse(incident.decidedAt)).toBeLessThanOrEqual(Date.parse(incident.rolledBackAt));
  expect(incident.evidence.probes[0]).toMatchObject({ name: 'arithmetic', passed: false, failures: [expect.stringContaining('500')] });
  const { rows: checks } = await stack.db.query(`SELECT decision, trigger, evidence FROM release_checks WHERE agent_id = 'default' AND version = $1`, [broken]);
  expect(checks).toContainEqual(expect.objectContaining({ decision: 'rollback', trigger: 'schedule' }));

  // New sessions get v1 again; the session that started on the broken version moved to v1 and answers with its prompt.
  expect((await versionOfNewSession()).version).toBe(1);
  const moved = (await stack.request('GET', `/api/v1/sessions/${onBroken.id}`)).body;
  expect(moved.agentVersion).toBe(1);
  expect(moved.state.agent.version).toBe(1);
  const reply = await stack.request('POST', `/api/v1/sessions/${onBroken.id}/chat`, { content: 'hello after the rollback', stream: false });
  expect(reply.status).toBe(200);
  const sent = stack.model.requests(onBroken.id).at(-1)!.body;
  expect(sent.messages[0].content).toBe(base.systemPrompt);
});

test('a watch follows an activation and rolls a broken version back within its first check', async () => {
  await schedule().pause('the watch alone must find it');
  try {
    const broken = await publish('plain', { systemPrompt: `You are a test assistant. ${BROKEN}`, healthChecks: [{ name: 'hello', prompt: 'Hello', expect: { replyMatches: 'Hello' } }] });
    const activated = await asAdmin('POST', '/api/v1/agents/plain/activate', { version: broken });
    expect(activated.body.watch.workflowId).toContain(`release-watch-${stack.env.KEEL_TASK_QUEUE}-plain-v${broken}`);
    const result = await client.workflow.getHandle(activated.body.watch.workflowId).result();
    expect(result).toEqual({ outcome: 'rolled_back', checks: 1 });
    const body = await release('plain');
    expect(body.release.activeVersion).toBe(1);
    expect(body.audit[0]).toMatchObject({ action: 'auto_rollback', fromVersion: broken, toVersion: 1 });
    const { rows } = await stack.db.query(`SELECT trigger, decision FROM release_checks WHERE agent_id = 'plain' AND version = $1`, [broken]);
    expect(rows).toEqual([{ trigger: 'watch', decision: 'rollback' }]);
  } finally {
    await schedule().unpause();
  }
});

test('a healthy version passes its watch; probes run through the real model and never write', async () => {
  const before = stack.model.requests(PROBE_USER).length;
  const good = await publish('plain', { systemPrompt: 'You are a good test assistant.', healthChecks: [{ name: 'sum', prompt: 'What is 4 + 4?', expect: { toolCalled: 'calculator', replyMatches: '\\b8\\b' } }] });
  const activated = await asAdmin('POST', '/api/v1/agents/plain/activate', { version: good, reason: 'better prompt' });
  const workflowId = activated.body.watch.workflowId as string;
  // The probation lasts 20 s; stop waiting once a few checks have passed.
  await eventually(async () => {
    const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM release_checks WHERE agent_id = 'plain' AND version = $1 AND trigger = 'watch' AND healthy`, [good]);
    return rows[0].n >= 2;
  }, 15_000, 'two healthy watch checks');
  expect((await release('plain')).release.activeVersion).toBe(good);
  await client.workflow.getHandle(workflowId).terminate('test done');
  const probes = stack.model.requests(PROBE_USER).slice(before);
  expect(probes.some((r) => r.body.messages.some((m: { role: string }) => m.role === 'tool'))).toBe(true);
});

test('a canary gets about its share of new sessions, each keeps its version, and a canary failing live traffic is dropped', async () => {
  const canary = await publish('default', { systemPrompt: 'You are the canary assistant.' });
  const res = await asAdmin('POST', '/api/v1/agents/default/activate', { version: canary, canaryPercent: 50, watch: false });
  expect(res.body.release).toMatchObject({ activeVersion: 1, canaryVersion: canary, canaryPercent: 50 });
  const sessions = await Promise.all(Array.from({ length: 60 }, () => versionOfNewSession()));
  const onCanary = sessions.filter((s) => s.version === canary);
  expect(sessions.every((s) => s.version === canary || s.version === 1)).toBe(true);
  // Binomial(60, 0.5): outside 15..45 has a probability below 1e-4.
  expect(onCanary.length).toBeGreaterThanOrEqual(15);
  expect(onCanary.length).toBeLessThanOrEqual(45);
  // Sticky: two turns of a canary session both run the canary's prompt.
  const sticky = onCanary[0]!.id;
  for (const content of ['first', 'second']) {
    expect((await stack.request('POST', `/api/v1/sessions/${sticky}/chat`, { content, stream: false })).status).toBe(200);
    expect(stack.model.requests(sticky).at(-1)!.body.messages[0].content).toBe('You are the canary assistant.');
  }

  // A broken canary without probes: only its live traffic (failed turns) can give it away.
  const def = await definition('default');
  const bad = await publish('default', { systemPrompt: `Bad canary. ${BROKEN}`, healthChecks: undefined, tools: def.tools });
  await asAdmin('POST', '/api/v1/agents/default/activate', { version: bad, canaryPercent: 99, watch: false });
  const victims = (await Promise.all(Array.from({ length: 8 }, () => versionOfNewSession()))).filter((s) => s.version === bad).slice(0, 3);
  expect(victims).toHaveLength(3);
  await Promise.all(victims.map((v) => stack.request('POST', `/api/v1/sessions/${v.id}/messages`, { content: 'hello' })));
  const dropped = await eventually(async () => {
    const body = await release('default');
    return body.release.canaryVersion === null ? body : null;
  }, 40_000, 'the canary to be dropped');
  expect(dropped.release.activeVersion).toBe(1);
  expect(dropped.versions.find((v: { version: number }) => v.version === bad).status).toBe('rolled_back');
  const incident = await eventually(async () => (await asAdmin('GET', '/api/v1/incidents?kind=release_rolled_back')).body.incidents.find((i: { version: number }) => i.version === bad), 10_000, 'the incident');
  expect(incident.evidence).toMatchObject({ role: 'canary', failed: ['turn_error_rate'], live: { failedTurns: 3 } });
});

test('an operator promotes a version and rolls it back by hand, each change an audit row', async () => {
  const next = await publish('default', { systemPrompt: 'You are the promoted assistant.' });
  await asAdmin('POST', '/api/v1/agents/default/activate', { version: next, watch: false, reason: 'promote' });
  expect((await versionOfNewSession()).version).toBe(next);
  const res = await asAdmin('POST', '/api/v1/agents/default/rollback', { reason: 'customer complaints' });
  expect(res.status).toBe(200);
  expect(res.body).toMatchObject({ rolledBack: next, role: 'active', release: { activeVersion: 1 }, audit: { action: 'rollback', fromVersion: next, toVersion: 1, actor: 'ops', reason: 'customer complaints' } });
  expect((await versionOfNewSession()).version).toBe(1);
});

describe('when rolling back cannot help', () => {
  const probe = { name: 'sum', prompt: 'What is 4 + 4?', expect: { toolCalled: 'calculator', replyMatches: '\\b8\\b' } };
  const good = (n: number) => ({ name: `Agent ${n}`, systemPrompt: `You are version ${n}.`, tools: ['calculator'], healthChecks: [probe] });
  const broken = (n: number) => ({ ...good(n), systemPrompt: `You are version ${n}. ${BROKEN}` });
  async function put(agentId: string, def: Record<string, unknown>, activate = true): Promise<number> {
    const res = await asAdmin('POST', `/api/v1/agents/${agentId}/versions`, def);
    expect(res.status).toBe(201);
    if (activate) expect((await asAdmin('POST', `/api/v1/agents/${agentId}/activate`, { version: res.body.version, watch: false })).status).toBe(200);
    return res.body.version as number;
  }
  const unhealthy = (agentId: string) =>
    eventually(async () => (await asAdmin('GET', `/api/v1/incidents?kind=release_unhealthy&agentId=${agentId}`)).body.incidents[0], 20_000, `${agentId}'s release_unhealthy incident`);

  test('a failing version with nothing before it stays, with a release_unhealthy incident and a no_rollback decision', async () => {
    const only = await put('solo', broken(1));
    const incident = await unhealthy('solo');
    expect(incident).toMatchObject({ version: only, evidence: { notRolledBack: 'there is no earlier good version to roll back to', failed: ['probe:sum'] } });
    expect((await release('solo')).release.activeVersion).toBe(only);
    const { rows } = await stack.db.query(`SELECT DISTINCT decision FROM release_checks WHERE agent_id = 'solo'`);
    expect(rows).toEqual([{ decision: 'no_rollback' }]);
  });

  test('a second failure within the health window is not rolled back again (an outage walks back no further)', async () => {
    const v1 = await put('cooled', good(1));
    const v2 = await put('cooled', broken(2));
    await eventually(async () => (await release('cooled')).release.activeVersion === v1, 20_000, 'the first rollback');
    const v3 = await put('cooled', broken(3));
    const incident = await unhealthy('cooled');
    expect(incident).toMatchObject({ version: v3, evidence: { notRolledBack: expect.stringContaining('already rolled back automatically') } });
    const body = await release('cooled');
    expect(body.release.activeVersion).toBe(v3);
    expect(body.audit.filter((a: { action: string }) => a.action === 'auto_rollback').map((a: { fromVersion: number }) => a.fromVersion)).toEqual([v2]);
  });

  test('a failure the previous version shares (every probe failing: an outage) is not rolled back', async () => {
    const v1 = await put('shared', good(1));
    const v2 = await put('shared', good(2));
    await eventually(async () => {
      const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM release_checks WHERE agent_id = 'shared' AND version = $1 AND healthy`, [v2]);
      return rows[0].n > 0;
    }, 20_000, 'a healthy check of v2');
    // The model provider fails every probe from now on.
    stack.model.script(PROBE_USER, { failNext: { count: 1_000_000, status: 503 } });
    try {
      const incident = await unhealthy('shared');
      expect(incident).toMatchObject({ version: v2, evidence: { notRolledBack: expect.stringContaining(`v${v1}, the version it would roll back to, fails its probe "sum" too`) } });
      expect((await release('shared')).release.activeVersion).toBe(v2);
    } finally {
      stack.model.script(PROBE_USER, { failNext: undefined });
    }
  });
});
