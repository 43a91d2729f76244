import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { createTestDatabase, dropTestDatabase } from './support/database';
import { sql } from 'slonik';
import { z } from 'zod';
import { AgentDefinition, resolveAgent, systemPromptOf } from '../contracts/agents';
import { canonicalJson, digestOf } from '../contracts/canonical';
import type { ToolDefinition, ToolPermission } from '../contracts/tools';
import { AgentConfigError, DEFAULT_AGENTS_FILE, loadAgentFile } from '../agents/load';
import { AgentRegistry } from '../agents/registry';
import { agentVersion, latestAgent, listLatestAgents, syncAgents } from '../db/agents';
import { getRelease, listAudit, listVersions, rollbackRelease } from '../db/releases';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';

function fakeTool(name: string, permission: ToolPermission): ToolDefinition {
  return {
    name,
    description: `fake ${name}`,
    parameters: { type: 'object', properties: {} },
    permission,
    requiresApproval: permission === 'write',
    timeoutMs: 10_000,
    retry: { maxAttempts: 3 },
  };
}

const tools: Record<string, ToolDefinition> = {
  calculator: fakeTool('calculator', 'read'),
  current_time: fakeTool('current_time', 'read'),
  http_request: fakeTool('http_request', 'read'),
  create_note: fakeTool('create_note', 'write'),
};

const agent = (fields: Record<string, unknown>): AgentDefinition =>
  AgentDefinition.parse({ id: 'a', name: 'A', systemPrompt: 'Be useful.', ...fields });

let tmpDir: string;
let fileCount = 0;
beforeAll(async () => {
  tmpDir = await mkdtemp(path.join(os.tmpdir(), 'keel-agents-'));
});
afterAll(async () => {
  await rm(tmpDir, { recursive: true, force: true });
});

async function yamlFile(text: string): Promise<string> {
  const file = path.join(tmpDir, `agents-${++fileCount}.yaml`);
  await writeFile(file, text);
  return file;
}

async function loadError(text: string): Promise<{ file: string; error: AgentConfigError }> {
  const file = await yamlFile(text);
  const error = await loadAgentFile(file).then(
    () => {
      throw new Error('expected the file to be rejected');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(AgentConfigError);
  return { file, error: error as AgentConfigError };
}

const twoAgents = (second: string) => `agents:
  - id: first
    name: First
    systemPrompt: Hello.
    tools: [calculator, create_note]
  - id: second
    name: Second
    systemPrompt: Hello.
    tools: [calculator, create_note]
${second}`;

describe('agent definitions file', () => {
  test('the repository file loads and validates, with defaults applied', async () => {
    const defs = await loadAgentFile(DEFAULT_AGENTS_FILE);
    expect(defs.map((d) => [d.id, d.busyPolicy])).toEqual([
      ['default', 'queue'],
      ['interrupter', 'interrupt'],
      ['strict', 'reject'],
    ]);
    for (const def of defs) expect(def.tools).toEqual(['calculator', 'current_time', 'http_request', 'create_note']);
    const [byDefault, , strict] = defs;
    expect(byDefault).toMatchObject({ approvalTtlMs: 1_800_000, maxStepsPerTurn: 8 });
    expect(strict?.approvalTtlMs).toBe(60_000);
  });

  test('a wrong busyPolicy names the file, the agent, the field and the line', async () => {
    const { file, error } = await loadError(twoAgents('    busyPolicy: sometimes\n'));
    expect(error.message).toBe(`${file}: agent "second": agents[1].busyPolicy (line 10): expected one of queue, interrupt, reject`);
    expect(error).toMatchObject({ file, field: 'agents[1].busyPolicy', line: 10 });
    expect(error.problems[0]).toMatchObject({ agent: 'second' });
  });

  test('permission and personality are validated like every field', async () => {
    const permission = await loadError(twoAgents('    permission: admin\n'));
    expect(permission.error.message).toContain('agent "second": agents[1].permission (line 10): expected one of read, write');
    const personality = await loadError(twoAgents('    personality:\n      tone: calm\n      mood: happy\n'));
    expect(personality.error).toMatchObject({ field: 'agents[1].personality.mood', line: 12 });
    expect(personality.error.message).toContain('agent "second"');
  });

  test('an unknown key is an error at that key', async () => {
    const { error } = await loadError(twoAgents('    model:\n      name: m\n      temprature: 0.5\n'));
    expect(error).toMatchObject({ field: 'agents[1].model.temprature', line: 12 });
    expect(error.message).toContain('unknown key');
  });

  test('a tool policy must name a tool the agent lists, and respects its bounds', async () => {
    const unlisted = await loadError(twoAgents('    toolPolicy:\n      http_request: { timeoutMs: 5000 }\n'));
    expect(unlisted.error).toMatchObject({ field: 'agents[1].toolPolicy.http_request', line: 11 });
    expect(unlisted.error.message).toContain('"http_request" is not in tools');

    const tooShort = await loadError(twoAgents('    toolPolicy:\n      create_note:\n        approvalTtlMs: 10\n'));
    expect(tooShort.error.message).toBe(`${tooShort.file}: agent "second": agents[1].toolPolicy.create_note.approvalTtlMs (line 12): must be at least 1000`);
  });

  test('the built-in tools (handoff, escalate) cannot be listed', async () => {
    const { error } = await loadError('agents:\n  - id: a\n    name: A\n    systemPrompt: x\n    tools: [calculator, escalate]\n');
    expect(error).toMatchObject({ field: 'agents[0].tools[1]' });
    expect(error.message).toContain('"escalate" is a built-in tool');
  });

  test('routers: members must be agents of the file, ids are shared with agents, errors name the router', async () => {
    const router = (body: string) => `agents:\n  - id: a\n    name: A\n    systemPrompt: x\nrouters:\n  - id: desk\n    name: Desk\n${body}`;
    const unknown = await loadError(router('    agents: [a, b]\n    classifier: { prompt: route }\n'));
    expect(unknown.error).toMatchObject({ field: 'routers[0].agents[1]' });
    expect(unknown.error.message).toContain('agent "desk"');
    expect(unknown.error.message).toContain('"b" is not an agent in this file');
    const clash = await loadError(router('    agents: [a]\n    classifier: { prompt: route }\n').replace('id: desk', 'id: a'));
    expect(clash.error.message).toContain('"a" is already an agent\'s id');
    const threshold = await loadError(router('    agents: [a]\n    classifier: { prompt: route, threshold: 2 }\n'));
    expect(threshold.error).toMatchObject({ field: 'routers[0].classifier.threshold' });
  });

  test('agent ids must be unique', async () => {
    const { error } = await loadError(twoAgents('  - id: first\n    name: Again\n    systemPrompt: Hello.\n'));
    expect(error).toMatchObject({ field: 'agents[2].id', line: 10 });
    expect(error.message).toContain('duplicate agent id "first"');
  });

  test('invalid YAML is reported with its line', async () => {
    const { file, error } = await loadError('agents:\n  - id: a\n    name: [A\n    systemPrompt: x\n');
    expect(error).toMatchObject({ file, field: '(syntax)' });
    expect(error.line).toBeGreaterThanOrEqual(3);
  });

  test('missing fields, bad values and an empty file each name their field', async () => {
    const missing = await loadError('agents:\n  - id: a\n    systemPrompt: x\n    maxStepsPerTurn: 0\n');
    expect(missing.error.problems).toEqual([
      { agent: 'a', field: 'agents[0].name', line: 2, message: 'required' },
      { agent: 'a', field: 'agents[0].maxStepsPerTurn', line: 4, message: 'must be at least 1' },
    ]);
    const badId = await loadError('agents:\n  - id: "no spaces"\n    name: A\n    systemPrompt: x\n');
    expect(badId.error).toMatchObject({ field: 'agents[0].id', line: 2 });
    const empty = await loadError('');
    expect(empty.error.message).toBe(`${empty.file}: (root): expected object, got null`);
  });

  test('the digest ignores key order and formatting, not content', () => {
    const a = agent({ tools: ['calculator'], model: { name: 'm', temperature: 0 } });
    const reordered = AgentDefinition.parse({ model: { temperature: 0, name: 'm' }, tools: ['calculator'], systemPrompt: 'Be useful.', name: 'A', id: 'a', busyPolicy: 'queue' });
    expect(digestOf(reordered)).toBe(digestOf(a));
    expect(digestOf(agent({ tools: ['calculator'], model: { name: 'm', temperature: 0.1 } }))).not.toBe(digestOf(a));
  });

  test('canonical JSON: keys sorted at every level, no whitespace, undefined members left out', () => {
    // Stored digests depend on this exact text: a change here would make every agent a new version.
    const text = '{"a":{"c":true,"d":[1,{"e":"x","f":null}]},"b":1.5,"é":"\\"q\\""}';
    expect(canonicalJson({ é: '"q"', b: 1.5, a: { d: [1, { f: null, e: 'x', g: undefined }], c: true } })).toBe(text);
    expect(digestOf({ b: 1.5, é: '"q"', a: { c: true, d: [1, { e: 'x', f: null }] } })).toBe(createHash('sha256').update(text).digest('hex'));
  });
});

describe('resolveAgent', () => {
  test('tool defaults apply when the agent sets nothing: write tools need approval, read tools do not', () => {
    const resolved = resolveAgent(agent({ tools: ['calculator', 'create_note'], approvalTtlMs: 90_000 }), 3, 'd', tools);
    expect(resolved).toMatchObject({ id: 'a', version: 3, digest: 'd', maxStepsPerTurn: 8, busyPolicy: 'queue', model: {} });
    expect(resolved.tools.map((t) => [t.name, t.requiresApproval, t.timeoutMs, t.approvalTtlMs])).toEqual([
      ['calculator', false, 10_000, 90_000],
      ['create_note', true, 10_000, 90_000],
    ]);
  });

  test('a write agent\'s tools all need approval unless a tool policy says otherwise; a read agent may not list a write tool', () => {
    const writer = agent({ permission: 'write', tools: ['calculator', 'create_note', 'current_time'], toolPolicy: { current_time: { requiresApproval: false } } });
    expect(resolveAgent(writer, 1, 'd', tools).tools.map((t) => [t.name, t.requiresApproval])).toEqual([
      ['calculator', true],
      ['create_note', true],
      ['current_time', false],
    ]);
    expect(() => resolveAgent(agent({ permission: 'read', tools: ['calculator', 'create_note'] }), 1, 'd', tools)).toThrow('agent "a": tools: "create_note" is a write tool, and the agent\'s permission is read');
    expect(resolveAgent(agent({ permission: 'read', tools: ['calculator'] }), 1, 'd', tools).tools[0]).toMatchObject({ requiresApproval: false });
  });

  test('a personality\'s tone follows the system prompt; without one the prompt is as written', () => {
    const toned = resolveAgent(agent({ personality: { tone: 'warm and brief', greeting: 'Hi!' } }), 1, 'd', tools);
    expect(systemPromptOf(toned)).toBe('Be useful.\n\nTone: warm and brief');
    expect(toned.personality).toEqual({ tone: 'warm and brief', greeting: 'Hi!' });
    expect(systemPromptOf(resolveAgent(agent({}), 1, 'd', tools))).toBe('Be useful.');
  });

  test('a per-tool policy overrides the agent and the tool', () => {
    const def = agent({
      tools: ['calculator', 'create_note'],
      toolPolicy: {
        calculator: { requiresApproval: true, timeoutMs: 500 },
        create_note: { requiresApproval: false, approvalTtlMs: 5_000 },
      },
    });
    const [calculator, createNote] = resolveAgent(def, 1, 'd', tools).tools;
    expect(calculator).toMatchObject({ permission: 'read', requiresApproval: true, timeoutMs: 500, approvalTtlMs: 1_800_000 });
    expect(createNote).toMatchObject({ permission: 'write', requiresApproval: false, timeoutMs: 10_000, approvalTtlMs: 5_000 });
    expect(tools.calculator).toMatchObject({ requiresApproval: false, timeoutMs: 10_000 });
  });

  test('tools must reach the model under distinct, valid names (an MCP tool\'s dot is sent as "__")', () => {
    const tool = (name: string) => ({ name, description: name, parameters: { type: 'object' }, permission: 'read' as const, requiresApproval: false, timeoutMs: 1_000, retry: { maxAttempts: 1 } });
    const tools = { 'shop.op': tool('shop.op'), shop__op: tool('shop__op'), [`s.${'x'.repeat(62)}`]: tool(`s.${'x'.repeat(62)}`) };
    const def = (names: string[]) => AgentDefinition.parse({ id: 'a', name: 'A', systemPrompt: 'x', tools: names });
    expect(() => resolveAgent(def(['shop.op', 'shop__op']), 1, 'd', tools)).toThrow('"shop.op" and "shop__op" reach the model under the same name "shop__op"');
    expect(() => resolveAgent(def([`s.${'x'.repeat(62)}`]), 1, 'd', tools)).toThrow('longer than 64 characters');
    expect(resolveAgent(def(['shop.op']), 1, 'd', tools).tools.map((t) => t.name)).toEqual(['shop.op']);
  });

  test('a tool missing from the registry is an error naming the agent and the tool', () => {
    expect(() => resolveAgent(agent({ id: 'helper', tools: ['calculator', 'teleport'] }), 1, 'd', tools)).toThrow(/agent "helper": unknown tool "teleport"/);
  });
});

describe('agent versions in Postgres', () => {
  const dbName = `keel_agents_${process.pid}`;
  let dbUrl: string;
  let pool: DatabasePool;
  let otherPool: DatabasePool;

  beforeAll(async () => {
    dbUrl = await createTestDatabase(dbName);
    await migrate(dbUrl);
    pool = await openPool(dbUrl, 4);
    otherPool = await openPool(dbUrl, 4);
  });
  afterAll(async () => {
    await pool?.end();
    await otherPool?.end();
    await dropTestDatabase(dbName);
  });

  test('an unchanged definition keeps its version; a changed one gets the next', async () => {
    const v1 = agent({ id: 'versions' });
    const v2 = agent({ id: 'versions', systemPrompt: 'Be brief.' });
    expect(await syncAgents(pool, [v1])).toEqual([{ id: 'versions', version: 1, digest: digestOf(v1), created: true }]);
    expect(await syncAgents(pool, [v1])).toEqual([{ id: 'versions', version: 1, digest: digestOf(v1), created: false }]);
    expect(await syncAgents(pool, [v2])).toEqual([{ id: 'versions', version: 2, digest: digestOf(v2), created: true }]);

    expect(await latestAgent(pool, 'versions')).toEqual({ id: 'versions', version: 2, digest: digestOf(v2), definition: v2 });
    expect((await agentVersion(pool, 'versions', 1))?.definition).toEqual(v1);
    expect(await agentVersion(pool, 'versions', 3)).toBeNull();
    expect(await latestAgent(pool, 'nobody')).toBeNull();
    expect((await listLatestAgents(pool)).find((a) => a.id === 'versions')?.version).toBe(2);
  });

  test('going back to an earlier definition reuses its version', async () => {
    const [a, b] = [agent({ id: 'revert' }), agent({ id: 'revert', name: 'B' })];
    await syncAgents(pool, [a]);
    await syncAgents(pool, [b]);
    expect(await syncAgents(pool, [a])).toEqual([{ id: 'revert', version: 1, digest: digestOf(a), created: false }]);
  });

  test('concurrent syncs of the same new definition store one version', async () => {
    const def = agent({ id: 'race' });
    const results = (await Promise.all([pool, otherPool, pool, otherPool].map((db) => syncAgents(db, [def])))).flat();
    expect(new Set(results.map((r) => r.version))).toEqual(new Set([1]));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(await agentVersion(pool, 'race', 2)).toBeNull();
  });

  /** Runs `other` while another connection has stored `def` as version 1 but not committed, until `other` waits on it. */
  async function whileStoring<T>(def: AgentDefinition, other: () => Promise<T>): Promise<T> {
    const client = new Client({ connectionString: dbUrl });
    await client.connect();
    try {
      await client.query('BEGIN');
      await client.query('INSERT INTO agents (id, version, digest, definition) VALUES ($1, 1, $2, $3)', [def.id, digestOf(def), JSON.stringify(def)]);
      const pending = other();
      await waitUntilBlocked();
      await client.query('COMMIT');
      return await pending;
    } finally {
      await client.end();
    }
  }

  async function waitUntilBlocked(): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const waiting = await pool.oneFirst(sql.type(z.object({ n: z.number() }))`
        SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`);
      if (waiting > 0) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    throw new Error('the other sync never waited for the open transaction');
  }

  test('a sync that meets the same definition being stored finds that version', async () => {
    const def = agent({ id: 'blocked-same' });
    expect(await whileStoring(def, () => syncAgents(pool, [def]))).toEqual([{ id: 'blocked-same', version: 1, digest: digestOf(def), created: false }]);
  });

  test('a sync that picked the version another definition is being stored under takes the next', async () => {
    const [first, second] = [agent({ id: 'blocked-other', name: 'First' }), agent({ id: 'blocked-other', name: 'Second' })];
    expect(await whileStoring(first, () => syncAgents(pool, [second]))).toEqual([{ id: 'blocked-other', version: 2, digest: digestOf(second), created: true }]);
    expect((await agentVersion(pool, 'blocked-other', 1))?.definition).toEqual(first);
  });

  test('the registry resolves every agent of the repository file at its stored version', async () => {
    const registry = await AgentRegistry.load(pool, DEFAULT_AGENTS_FILE, tools);
    expect(registry.list().map((a) => a.id)).toEqual(['default', 'interrupter', 'strict']);
    const main = registry.get(registry.defaultId);
    expect(main).toMatchObject({ id: 'default', version: 1, busyPolicy: 'queue' });
    expect(main?.tools.find((t) => t.name === 'create_note')).toMatchObject({ requiresApproval: true, approvalTtlMs: 1_800_000 });
    expect(registry.get('strict')?.tools.every((t) => t.approvalTtlMs === 60_000)).toBe(true);
    expect(registry.get('nobody')).toBeUndefined();

    const again = await AgentRegistry.load(otherPool, DEFAULT_AGENTS_FILE, tools);
    expect(again.list().map((a) => [a.id, a.version, a.digest])).toEqual(registry.list().map((a) => [a.id, a.version, a.digest]));
  });

  test('the registry stores nothing when a tool is unknown, and needs a default agent', async () => {
    const file = await yamlFile('agents:\n  - id: default\n    name: D\n    systemPrompt: x\n  - id: ghost\n    name: G\n    systemPrompt: x\n    tools: [teleport]\n');
    await expect(AgentRegistry.load(pool, file, tools)).rejects.toThrow(/: agent "ghost": agents\[1\]\.tools: unknown tool "teleport"/);
    expect(await latestAgent(pool, 'ghost')).toBeNull();

    const noDefault = await yamlFile('agents:\n  - id: other\n    name: O\n    systemPrompt: x\n');
    await expect(AgentRegistry.load(pool, noDefault, tools)).rejects.toThrow(AgentConfigError);
  });

  test('the file releases its version: seeded, then each newer one; a rollback outlives a restart; an older file changes nothing', async () => {
    const yaml = (prompt: string) => yamlFile(`agents:\n  - id: default\n    name: D\n    systemPrompt: x\n  - id: rel\n    name: R\n    systemPrompt: ${prompt}\n`);
    const active = async () => (await getRelease(pool, 'rel'))?.active_version;
    const first = await yaml('one');
    await AgentRegistry.load(pool, first, tools);
    expect(await active()).toBe(1);
    const second = await yaml('two');
    await Promise.all([AgentRegistry.load(pool, second, tools), AgentRegistry.load(otherPool, second, tools)]);
    expect(await active()).toBe(2);
    // Two processes starting with the changed file released it once.
    expect((await listAudit(pool, 'rel', 10)).filter((a) => a.action === 'activate').map((a) => a.to_version)).toEqual([2, 1]);

    await rollbackRelease(pool, { agentId: 'rel', reason: 'bad', actor: 'ops', automatic: false });
    expect(await active()).toBe(1);
    await AgentRegistry.load(pool, second, tools);
    expect(await active()).toBe(1);
    expect((await listVersions(pool, 'rel')).find((v) => v.version === 2)?.status).toBe('rolled_back');

    // An older file (an old process restarting mid-deploy, or a revert) does not undo the release.
    await AgentRegistry.load(pool, first, tools);
    await AgentRegistry.load(pool, second, tools);
    const third = await yaml('three');
    await AgentRegistry.load(pool, third, tools);
    expect(await active()).toBe(3);
    await AgentRegistry.load(pool, first, tools);
    expect(await active()).toBe(3);
    expect((await listAudit(pool, 'rel', 1))[0]).toMatchObject({ action: 'activate', to_version: 3, actor: 'agents-file' });
  });
});
