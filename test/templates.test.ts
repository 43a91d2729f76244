import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'slonik';
import { z } from 'zod';
import { loadAgentFile } from '../agents/load';
import { AgentRegistry } from '../agents/registry';
import { availableTemplates, templateFile } from '../agents/templates';
import { loadSettings } from '../config/settings';
import { resolveAgent } from '../contracts/agents';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { demoToolCall } from '../model-server/demo-tools';
import type { ChatRequest } from '../model-server/reply';
import { builtinTools, DEFAULT_TOOL_SETTINGS, toolDefinitions, ToolInputError, type Tool, type ToolContext } from '../tools';
import { COUPON_CODE_PATTERN, demoTools } from '../tools/demo';
import { createTestDatabase, dropTestDatabase } from './support/database';
import { eventually } from './support/stack';

const TEMPLATES = ['ecommerce', 'fintech', 'saas'];

describe('template selection', () => {
  test('the templates are the YAML files of agents/templates', () => {
    expect(availableTemplates()).toEqual(TEMPLATES);
  });

  test('KEEL_TEMPLATE picks agents/templates/<name>.yaml; unset, KEEL_AGENTS_FILE or agents/agents.yaml', () => {
    expect(loadSettings({ KEEL_TEMPLATE: 'ecommerce' }).agentsFile).toBe(path.join(__dirname, '..', 'agents', 'templates', 'ecommerce.yaml'));
    expect(loadSettings({ KEEL_TEMPLATE: 'saas' }).template).toBe('saas');
    expect(loadSettings({}).agentsFile).toBe('agents/agents.yaml');
    expect(loadSettings({ KEEL_AGENTS_FILE: 'custom/agents.yaml' }).agentsFile).toBe('custom/agents.yaml');
    expect(loadSettings({ KEEL_TEMPLATE: '', KEEL_AGENTS_FILE: 'custom/agents.yaml' }).agentsFile).toBe('custom/agents.yaml');
  });

  test('an unknown template is refused at start with the names of those there are', () => {
    expect(() => loadSettings({ KEEL_TEMPLATE: 'shop' })).toThrow('Invalid configuration: KEEL_TEMPLATE: unknown template "shop" (available templates: ecommerce, fintech, saas)');
    // A path is not a name: nothing outside agents/templates is read.
    expect(() => loadSettings({ KEEL_TEMPLATE: '../agents' })).toThrow('unknown template "../agents" (available templates: ecommerce, fintech, saas)');
    expect(() => loadSettings({ KEEL_TEMPLATE: 'ecommerce.yaml' })).toThrow('unknown template "ecommerce.yaml"');
  });

  test('KEEL_AGENTS_FILE and KEEL_TEMPLATE together are refused', () => {
    expect(() => loadSettings({ KEEL_TEMPLATE: 'ecommerce', KEEL_AGENTS_FILE: 'agents/agents.yaml' })).toThrow(
      'Invalid configuration: KEEL_AGENTS_FILE and KEEL_TEMPLATE are both set; set one (KEEL_TEMPLATE=<name> runs agents/templates/<name>.yaml)',
    );
  });

  test('the list is read from the directory: only .yaml files, sorted; an empty one lists none', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'keel-templates-'));
    try {
      for (const file of ['retail.yaml', 'airline.yaml', 'notes.txt', 'draft.yml']) writeFileSync(path.join(dir, file), 'agents: []\n');
      expect(availableTemplates(dir)).toEqual(['airline', 'retail']);
      expect(templateFile('retail', dir)).toBe(path.join(dir, 'retail.yaml'));
      expect(() => templateFile('draft', dir)).toThrow('unknown template "draft" (available templates: airline, retail)');
      const empty = path.join(dir, 'empty');
      mkdirSync(empty);
      expect(() => templateFile('x', empty)).toThrow('unknown template "x" (available templates: none)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('template files', () => {
  const tools = toolDefinitions(DEFAULT_TOOL_SETTINGS);

  // Every file there, so a template added later is checked too.
  test.each(availableTemplates())('%s: valid, one router over its agents, every tool registered and within the agent permission', async (name) => {
    const defs = await loadAgentFile(templateFile(name));
    const routers = defs.filter((d) => d.router);
    expect(routers).toHaveLength(1);
    const members = defs.filter((d) => !d.router);
    expect(routers[0]!.router!.agents).toEqual(members.map((d) => d.id));
    for (const def of members) {
      // Throws on an unknown tool or a write tool in a read agent.
      const agent = resolveAgent(def, 1, 'd', tools);
      expect(def.personality?.greeting).toEqual(expect.any(String));
      expect(def.personality?.escalationMessage).toEqual(expect.any(String));
      expect(def.permission).toEqual(expect.stringMatching(/^(read|write)$/));
      for (const tool of agent.tools) expect([tool.name, tool.requiresApproval]).toEqual([tool.name, tool.permission === 'write']);
      if (def.permission === 'write') expect(agent.tools.map((t) => t.permission)).toContain('write');
    }
  });

  test('ecommerce: support routes to order_lookup (read), order_actions and discount (write) and fallback (read, no tools)', async () => {
    const defs = await loadAgentFile(templateFile('ecommerce'));
    const byId = new Map(defs.map((d) => [d.id, d]));
    expect(byId.get('support')?.router?.agents).toEqual(['order_lookup', 'order_actions', 'discount', 'fallback']);
    expect([...byId.values()].filter((d) => !d.router).map((d) => [d.id, d.permission, d.tools])).toEqual([
      ['order_lookup', 'read', ['get_order_status', 'get_tracking_info']],
      ['order_actions', 'write', ['cancel_order', 'modify_order']],
      ['discount', 'write', ['apply_discount', 'generate_coupon']],
      ['fallback', 'read', []],
    ]);
  });

  test('every demo tool is registered, with a closed parameter schema; write tools need approval', () => {
    expect(demoTools.map((t) => t.definition.name).sort()).toEqual(
      ['apply_discount', 'cancel_order', 'change_plan', 'dispute_transaction', 'freeze_card', 'generate_coupon', 'get_balance', 'get_order_status', 'get_subscription', 'get_tracking_info', 'list_transactions', 'modify_order'].sort(),
    );
    for (const tool of demoTools) {
      expect(builtinTools[tool.definition.name]).toBe(tool);
      expect(tool.definition.parameters).toMatchObject({ type: 'object', additionalProperties: false });
      expect(tool.definition.requiresApproval).toBe(tool.definition.permission === 'write');
    }
    expect(demoTools.filter((t) => t.definition.permission === 'write').map((t) => t.definition.name).sort()).toEqual(
      ['apply_discount', 'cancel_order', 'change_plan', 'dispute_transaction', 'freeze_card', 'generate_coupon', 'modify_order'],
    );
  });
});

function tool(name: string): Tool {
  const found = builtinTools[name];
  if (!found) throw new Error(`no tool ${name}`);
  return found;
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof Error)) throw new Error(`expected a rejection, got ${String(error)}`);
  return error;
}

describe('demo tools on PostgreSQL', () => {
  const databaseName = `keel_templates_${process.pid}`;
  let pool: DatabasePool;
  let keys = 0;

  beforeAll(async () => {
    const url = await createTestDatabase(databaseName);
    await migrate(url);
    pool = await openPool(url, 5);
  });
  afterAll(async () => {
    await pool?.end();
    await dropTestDatabase(databaseName);
  });
  beforeEach(async () => {
    await pool.query(sql.unsafe`SELECT demo_reset()`);
  });

  function context(idempotencyKey = `wf-templates/call-${++keys}`): ToolContext {
    return { sessionId: 'session-t', toolCallId: idempotencyKey, idempotencyKey, pool, signal: new AbortController().signal, settings: DEFAULT_TOOL_SETTINGS };
  }
  async function run(name: string, args: unknown, ctx: ToolContext = context()): Promise<any> {
    const t = tool(name);
    return t.execute(t.parse(args), ctx);
  }
  async function refusal(name: string, args: unknown, ctx: ToolContext = context()): Promise<Error> {
    const error = await rejection(run(name, args, ctx));
    expect(error).toBeInstanceOf(ToolInputError);
    return error;
  }
  const orderRow = (id: string) =>
    pool.one(sql.type(z.object({ status: z.string(), cancel_reason: z.string().nullable(), shipping_address: z.string() }))`SELECT status, cancel_reason, shipping_address FROM demo_orders WHERE id = ${id}`);
  const actions = (key: string) => pool.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM demo_actions WHERE idempotency_key = ${key}`);

  describe('ecommerce', () => {
    test('get_order_status: status, items and total of a seeded order; a discount shows in the total', async () => {
      await expect(run('get_order_status', { order_id: '1001' })).resolves.toEqual({
        orderId: '1001',
        customer: 'Alice Martin',
        status: 'paid',
        items: [
          { sku: 'MUG-01', name: 'Ceramic mug', quantity: 2, unitPrice: '12.50' },
          { sku: 'TEA-10', name: 'Green tea, 100 g', quantity: 1, unitPrice: '8.90' },
        ],
        subtotal: '33.90',
        discountPercent: null,
        total: '33.90',
        currency: 'USD',
        shippingAddress: '12 Rue des Lilas, 69003 Lyon, France',
        updatedAt: expect.any(String),
      });
      // 36.50 less 5 % (1.825, rounded to 1.83).
      await expect(run('get_order_status', { order_id: '1003' })).resolves.toMatchObject({ status: 'delivered', subtotal: '36.50', discountPercent: 5, total: '34.67' });
      await expect(run('get_order_status', { order_id: '1005' })).resolves.toMatchObject({ status: 'cancelled', cancelReason: 'ordered twice by mistake' });
    });

    test('an order number may come as "#1002" or as a number; anything else is an input error', async () => {
      await expect(run('get_order_status', { order_id: '#1002' })).resolves.toMatchObject({ orderId: '1002', status: 'shipped' });
      await expect(run('get_order_status', { order_id: 1004 })).resolves.toMatchObject({ orderId: '1004', status: 'pending' });
      for (const args of [{ order_id: 'abc' }, { order_id: '' }, {}, { order_id: '1001', extra: true }, { order_id: '1001; DROP TABLE demo_orders' }]) {
        expect(() => tool('get_order_status').parse(args)).toThrow(ToolInputError);
      }
      expect(() => tool('get_order_status').parse({ order_id: 'abc' })).toThrow('invalid arguments: order_id: must look like an order number, e.g. 1001');
    });

    test('an unknown order is an input error the model reads, for every order tool', async () => {
      for (const [name, args] of [
        ['get_order_status', { order_id: '9999' }],
        ['get_tracking_info', { order_id: '9999' }],
        ['cancel_order', { order_id: '9999' }],
        ['modify_order', { order_id: '9999', shipping_address: '1 Main Street' }],
        ['apply_discount', { order_id: '9999', percent: 10 }],
      ] as const) {
        expect((await refusal(name, args)).message).toBe('order 9999 not found');
      }
    });

    test('get_tracking_info: carrier, number and dates; an order not handed to a carrier says so', async () => {
      await expect(run('get_tracking_info', { order_id: '1002' })).resolves.toEqual({
        orderId: '1002',
        status: 'shipped',
        carrier: 'USPS',
        trackingNumber: '9400111899223857263511',
        estimatedDelivery: '2025-06-12',
        deliveredOn: null,
      });
      await expect(run('get_tracking_info', { order_id: '1003' })).resolves.toMatchObject({ carrier: 'DHL', deliveredOn: '2025-06-02' });
      await expect(run('get_tracking_info', { order_id: '1004' })).resolves.toEqual({
        orderId: '1004',
        status: 'pending',
        carrier: null,
        trackingNumber: null,
        estimatedDelivery: null,
        deliveredOn: null,
        note: 'order 1004 has not been handed to a carrier yet',
      });
    });

    test('cancel_order refuses an order already shipped, delivered or cancelled, and changes nothing', async () => {
      const ctx = context();
      expect((await refusal('cancel_order', { order_id: '1002' }, ctx)).message).toBe('order 1002 has already been shipped and can no longer be cancelled');
      expect((await refusal('cancel_order', { order_id: '1003' })).message).toBe('order 1003 has already been delivered and can no longer be cancelled');
      expect((await refusal('cancel_order', { order_id: '1005' })).message).toBe('order 1005 is already cancelled');
      expect(await orderRow('1002')).toMatchObject({ status: 'shipped', cancel_reason: null });
      // The refused call left no claim behind: its retry checks again.
      expect(await actions(ctx.idempotencyKey)).toBe(0);
    });

    test('cancel_order: a retried call (same idempotency key) cancels once and answers the same result', async () => {
      const ctx = context();
      const first = await run('cancel_order', { order_id: '1001', reason: 'found it cheaper elsewhere' }, ctx);
      expect(first).toEqual({ orderId: '1001', previousStatus: 'paid', status: 'cancelled', reason: 'found it cheaper elsewhere', refund: '33.90', currency: 'USD', applied: 'now' });
      const retry = await run('cancel_order', { order_id: '1001', reason: 'found it cheaper elsewhere' }, ctx);
      expect(retry).toEqual({ ...first, applied: 'already' });
      expect(await orderRow('1001')).toMatchObject({ status: 'cancelled', cancel_reason: 'found it cheaper elsewhere' });
      expect(await actions(ctx.idempotencyKey)).toBe(1);
      // Another call is another cancellation, which the order now refuses.
      expect((await refusal('cancel_order', { order_id: '1001' })).message).toBe('order 1001 is already cancelled');
      // A pending order has nothing to refund.
      await expect(run('cancel_order', { order_id: '1004' })).resolves.toMatchObject({ previousStatus: 'pending', reason: 'requested by the customer', refund: '0.00' });
    });

    test('an attempt that finds the call claimed by a running attempt waits for it, then answers its result', async () => {
      const ctx = context();
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let claimed!: () => void;
      const claim = new Promise<void>((resolve) => (claimed = resolve));
      // The first attempt: claims the key, then holds its transaction open.
      const first = pool.transaction(async (tx) => {
        await tx.query(sql.unsafe`INSERT INTO demo_actions (idempotency_key, tool) VALUES (${ctx.idempotencyKey}, 'cancel_order')`);
        claimed();
        await gate;
        await tx.query(sql.unsafe`UPDATE demo_actions SET result = ${sql.jsonb({ orderId: '1001', status: 'cancelled', by: 'first attempt' })} WHERE idempotency_key = ${ctx.idempotencyKey}`);
      });
      await claim;
      const second = run('cancel_order', { order_id: '1001' }, ctx);
      // The race is hit: the second attempt is blocked on the first one's claim.
      await eventually(
        () =>
          pool.maybeOneFirst(sql.type(z.object({ pid: z.number() }))`
            SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO demo_actions%'`),
        10_000,
        'the second attempt to wait on the claim',
      );
      release();
      await first;
      await expect(second).resolves.toEqual({ orderId: '1001', status: 'cancelled', by: 'first attempt', applied: 'already' });
      expect(await orderRow('1001')).toMatchObject({ status: 'paid' });
    });

    test('an attempt waiting on a claim that is rolled back makes the change itself', async () => {
      const ctx = context();
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let claimed!: () => void;
      const claim = new Promise<void>((resolve) => (claimed = resolve));
      const first = pool.transaction(async (tx) => {
        await tx.query(sql.unsafe`INSERT INTO demo_actions (idempotency_key, tool) VALUES (${ctx.idempotencyKey}, 'cancel_order')`);
        claimed();
        await gate;
        throw new Error('first attempt failed');
      });
      await claim;
      const second = run('cancel_order', { order_id: '1001' }, ctx);
      await eventually(
        () =>
          pool.maybeOneFirst(sql.type(z.object({ pid: z.number() }))`
            SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO demo_actions%'`),
        10_000,
        'the second attempt to wait on the claim',
      );
      release();
      await expect(first).rejects.toThrow('first attempt failed');
      await expect(second).resolves.toMatchObject({ orderId: '1001', status: 'cancelled', applied: 'now' });
      expect(await actions(ctx.idempotencyKey)).toBe(1);
    });

    test('modify_order changes the address or quantities of an order not shipped yet', async () => {
      const address = await run('modify_order', { order_id: '1004', shipping_address: '7 Broad Street, Lagos, Nigeria' });
      expect(address).toMatchObject({ orderId: '1004', shippingAddress: '7 Broad Street, Lagos, Nigeria', changed: ['shipping_address'], applied: 'now' });
      const fewer = await run('modify_order', { order_id: '1001', items: [{ sku: 'MUG-01', quantity: 1 }] });
      expect(fewer).toMatchObject({ items: [{ sku: 'MUG-01', quantity: 1 }, { sku: 'TEA-10', quantity: 1 }], subtotal: '21.40', total: '21.40', changed: ['items'] });
      const removed = await run('modify_order', { order_id: '1001', items: [{ sku: 'TEA-10', quantity: 0 }] });
      expect(removed.items).toEqual([{ sku: 'MUG-01', name: 'Ceramic mug', quantity: 1, unitPrice: '12.50' }]);
      expect((await refusal('modify_order', { order_id: '1001', items: [{ sku: 'MUG-01', quantity: 0 }] })).message).toBe(
        'order 1001 must keep at least one item; to drop all of them, cancel the order',
      );
      expect((await refusal('modify_order', { order_id: '1001', items: [{ sku: 'LAMP-02', quantity: 1 }] })).message).toBe('order 1001 has no item LAMP-02; its items are MUG-01');
      expect((await refusal('modify_order', { order_id: '1002', shipping_address: '1 Other Street' })).message).toBe('order 1002 has already been shipped and can no longer be changed');
      expect(() => tool('modify_order').parse({ order_id: '1001' })).toThrow('invalid arguments: nothing to change: give shipping_address or items');
      expect(() => tool('modify_order').parse({ order_id: '1001', items: [{ sku: 'MUG-01', quantity: 21 }] })).toThrow(ToolInputError);
    });

    test('apply_discount takes a whole percentage from 1 to 100: 0, 101, 10.5 and "10" are refused', async () => {
      for (const percent of [0, 101, 10.5, '10', -5, null]) {
        expect(() => tool('apply_discount').parse({ order_id: '1001', percent })).toThrow('invalid arguments: percent: must be a whole number from 1 to 100');
      }
      // 1 % of 33.90 is 0.339, rounded to 0.34.
      await expect(run('apply_discount', { order_id: '1001', percent: 1 })).resolves.toEqual({ orderId: '1001', percent: 1, previousTotal: '33.90', total: '33.56', currency: 'USD', applied: 'now' });
      await expect(run('apply_discount', { order_id: '1006', percent: 100 })).resolves.toMatchObject({ previousTotal: '39.99', total: '0.00' });
      await expect(run('get_order_status', { order_id: '1001' })).resolves.toMatchObject({ discountPercent: 1, total: '33.56' });
    });

    test('apply_discount: one discount per order, none on a cancelled order, once per call', async () => {
      const ctx = context();
      const first = await run('apply_discount', { order_id: '1004', percent: 10 }, ctx);
      await expect(run('apply_discount', { order_id: '1004', percent: 10 }, ctx)).resolves.toEqual({ ...first, applied: 'already' });
      expect((await refusal('apply_discount', { order_id: '1004', percent: 20 })).message).toBe('order 1004 already has a 10% discount; an order takes one');
      expect((await refusal('apply_discount', { order_id: '1005', percent: 10 })).message).toBe('order 1005 is cancelled: there is nothing to discount');
    });

    test('generate_coupon: SAVE<pct>-<8 uppercase hex>, stored once per call', async () => {
      const ctx = context();
      const coupon = await run('generate_coupon', { percent: 15 }, ctx);
      expect(coupon.code).toMatch(/^SAVE15-[0-9A-F]{8}$/);
      expect(coupon.code).toMatch(COUPON_CODE_PATTERN);
      expect(coupon).toEqual({ code: coupon.code, percent: 15, applied: 'now' });
      await expect(run('generate_coupon', { percent: 15 }, ctx)).resolves.toEqual({ ...coupon, applied: 'already' });
      const stored = await pool.any(sql.type(z.object({ code: z.string(), percent: z.number(), session_id: z.string().nullable() }))`
        SELECT code, percent, session_id FROM demo_coupons WHERE code LIKE 'SAVE%' ORDER BY code`);
      expect(stored).toEqual([{ code: coupon.code, percent: 15, session_id: 'session-t' }]);
      const other = await run('generate_coupon', { percent: 100 });
      expect(other.code).toMatch(/^SAVE100-[0-9A-F]{8}$/);
      expect(other.code).not.toBe(coupon.code);
      for (const percent of [0, 101]) expect(() => tool('generate_coupon').parse({ percent })).toThrow(ToolInputError);
      for (const code of ['SAVE0-0123ABCD', 'SAVE101-0123ABCD', 'SAVE10-0123abcd', 'SAVE10-0123ABC', 'SAVE010-0123ABCD']) expect(code).not.toMatch(COUPON_CODE_PATTERN);
    });

    test('the registry stores a template and makes its router the default agent', async () => {
      const registry = await AgentRegistry.load(pool, templateFile('ecommerce'), toolDefinitions(DEFAULT_TOOL_SETTINGS));
      expect(registry.defaultId).toBe('support');
      expect(registry.get('order_actions')?.tools.map((t) => [t.name, t.requiresApproval])).toEqual([
        ['cancel_order', true],
        ['modify_order', true],
      ]);
    });
  });

  describe('saas', () => {
    test('get_subscription: plan, seats, status and monthly price', async () => {
      await expect(run('get_subscription', { account_id: 'acme' })).resolves.toEqual({
        accountId: 'acme',
        company: 'Acme Corp',
        plan: 'pro',
        seats: 25,
        maxSeats: 100,
        status: 'active',
        renewsOn: '2025-07-01',
        pricePerSeat: '29.00',
        monthlyTotal: '725.00',
        currency: 'USD',
      });
      await expect(run('get_subscription', { account_id: 'ACME' })).resolves.toMatchObject({ accountId: 'acme' });
      expect((await refusal('get_subscription', { account_id: 'nope' })).message).toBe('account nope not found');
    });

    test('change_plan moves an account once per call, within the plan seat limit', async () => {
      const ctx = context();
      const changed = await run('change_plan', { account_id: 'acme', plan: 'enterprise' }, ctx);
      expect(changed).toMatchObject({ accountId: 'acme', previousPlan: 'pro', previousSeats: 25, plan: 'enterprise', seats: 25, monthlyTotal: '1225.00', applied: 'now' });
      await expect(run('change_plan', { account_id: 'acme', plan: 'enterprise' }, ctx)).resolves.toEqual({ ...changed, applied: 'already' });
      await expect(run('change_plan', { account_id: 'globex', plan: 'starter', seats: 10 })).resolves.toMatchObject({ seats: 10, monthlyTotal: '90.00' });
      expect((await refusal('change_plan', { account_id: 'acme', plan: 'starter' })).message).toBe('the starter plan allows at most 10 seats, and account acme would have 25');
      expect((await refusal('change_plan', { account_id: 'hooli', plan: 'enterprise' })).message).toBe('the subscription of account hooli is cancelled; it can no longer change plan');
      expect((await refusal('change_plan', { account_id: 'initech', plan: 'free' })).message).toBe('account initech is already on the free plan with 1 seats');
      expect(() => tool('change_plan').parse({ account_id: 'acme', plan: 'platinum' })).toThrow(ToolInputError);
      await expect(run('get_subscription', { account_id: 'acme' })).resolves.toMatchObject({ plan: 'enterprise' });
    });
  });

  describe('fintech', () => {
    test('get_balance and list_transactions, newest first, at most the limit', async () => {
      await expect(run('get_balance', { account_id: 'acc-100' })).resolves.toEqual({ accountId: 'ACC-100', holder: 'Alice Martin', balance: '2450.75', currency: 'EUR' });
      const two = await run('list_transactions', { account_id: 'ACC-100', limit: 2 });
      expect(two).toEqual({
        accountId: 'ACC-100',
        currency: 'EUR',
        transactions: [
          { transactionId: 'TX-5005', postedOn: '2025-06-05', merchant: 'Streaming Plus', amount: '-15.99', status: 'disputed', disputeReason: 'charged after the subscription ended' },
          { transactionId: 'TX-5004', postedOn: '2025-06-04', merchant: 'Grocery Mart', amount: '-76.20', status: 'posted' },
        ],
      });
      const all = await run('list_transactions', { account_id: 'ACC-100' });
      expect(all.transactions.map((t: { transactionId: string }) => t.transactionId)).toEqual(['TX-5005', 'TX-5004', 'TX-5003', 'TX-5002', 'TX-5001']);
      expect(() => tool('list_transactions').parse({ account_id: 'ACC-100', limit: 51 })).toThrow(ToolInputError);
      expect((await refusal('get_balance', { account_id: 'ACC-999' })).message).toBe('account ACC-999 not found');
    });

    test('freeze_card freezes once per call and refuses a frozen or unknown card', async () => {
      const ctx = context();
      const frozen = await run('freeze_card', { card_last4: '4242', reason: 'card reported stolen' }, ctx);
      expect(frozen).toEqual({ cardLast4: '4242', accountId: 'ACC-100', status: 'frozen', reason: 'card reported stolen', applied: 'now' });
      await expect(run('freeze_card', { card_last4: '4242', reason: 'card reported stolen' }, ctx)).resolves.toEqual({ ...frozen, applied: 'already' });
      expect((await refusal('freeze_card', { card_last4: '4242' })).message).toBe('card ending in 4242 is already frozen (card reported stolen)');
      expect((await refusal('freeze_card', { card_last4: '0000' })).message).toBe('card ending in 0000 not found');
      expect(() => tool('freeze_card').parse({ card_last4: '42424' })).toThrow(ToolInputError);
    });

    test('dispute_transaction disputes a payment once, and refuses a credit or a disputed one', async () => {
      const ctx = context();
      const disputed = await run('dispute_transaction', { transaction_id: 'tx-5003', reason: 'never received the laptop' }, ctx);
      expect(disputed).toEqual({
        transactionId: 'TX-5003',
        accountId: 'ACC-100',
        postedOn: '2025-06-03',
        merchant: 'Online Electronics',
        amount: '-899.99',
        status: 'disputed',
        disputeReason: 'never received the laptop',
        applied: 'now',
      });
      await expect(run('dispute_transaction', { transaction_id: 'TX-5003', reason: 'never received the laptop' }, ctx)).resolves.toEqual({ ...disputed, applied: 'already' });
      expect((await refusal('dispute_transaction', { transaction_id: 'TX-5001', reason: 'x' })).message).toBe('transaction TX-5001 is a credit of 3200.00, not a payment: there is nothing to dispute');
      expect((await refusal('dispute_transaction', { transaction_id: 'TX-5005', reason: 'x' })).message).toBe('transaction TX-5005 is already disputed (charged after the subscription ended)');
      expect(() => tool('dispute_transaction').parse({ transaction_id: 'TX-5003' })).toThrow(ToolInputError);
    });
  });
});

describe('the offline model calls the demo tools', () => {
  const ECOMMERCE = ['get_order_status', 'get_tracking_info', 'cancel_order', 'modify_order', 'apply_discount', 'generate_coupon'];
  const SAAS = ['get_subscription', 'change_plan'];
  const FINTECH = ['get_balance', 'list_transactions', 'freeze_card', 'dispute_transaction'];

  function request(tools: string[], userTexts: string[], extra: Partial<ChatRequest> = {}): ChatRequest {
    const messages: ChatRequest['messages'] = [{ role: 'system', content: 'You are a demo.' }];
    for (const [i, text] of userTexts.entries()) {
      if (i > 0) messages.push({ role: 'assistant', content: 'OK.' });
      messages.push({ role: 'user', content: text });
    }
    return { model: 'keel-local', messages, tools: tools.map((name) => ({ type: 'function', function: { name } })), ...extra };
  }

  /** The one call the offline model makes, with its arguments checked by the tool's own parser. */
  function callFor(tools: string[], ...userTexts: string[]): { name: string; args: unknown } | undefined {
    const reply = demoToolCall(request(tools, userTexts), userTexts.at(-1)!);
    if (reply === undefined) return undefined;
    if (reply.kind !== 'tool_calls' || reply.calls.length !== 1) throw new Error(`unexpected reply ${JSON.stringify(reply)}`);
    const call = reply.calls[0]!;
    const args = JSON.parse(call.arguments) as unknown;
    tool(call.name).parse(args);
    return { name: call.name, args };
  }

  test.each([
    ['Where is order 1001?', 'get_order_status', { order_id: '1001' }],
    ['What is the status of order #1002', 'get_order_status', { order_id: '1002' }],
    ["What's in order 1003?", 'get_order_status', { order_id: '1003' }],
    ['Can you track order 1002 for me?', 'get_tracking_info', { order_id: '1002' }],
    ['I need the tracking number for 1001', 'get_tracking_info', { order_id: '1001' }],
    ['Please cancel order 1001 because I ordered the wrong size.', 'cancel_order', { order_id: '1001', reason: 'I ordered the wrong size' }],
    ['cancel order 1004', 'cancel_order', { order_id: '1004' }],
    ['Change the address of order 1004 to 5 Main Street, Springfield.', 'modify_order', { order_id: '1004', shipping_address: '5 Main Street, Springfield' }],
    ['Modify order 1001: set the quantity of mug-01 to 3', 'modify_order', { order_id: '1001', items: [{ sku: 'MUG-01', quantity: 3 }] }],
    ['Please update order 1001 and remove TEA-10', 'modify_order', { order_id: '1001', items: [{ sku: 'TEA-10', quantity: 0 }] }],
    ['Give me 10 % off order 1001', 'apply_discount', { order_id: '1001', percent: 10 }],
    ['Can I have a 15% discount on #1006?', 'apply_discount', { order_id: '1006', percent: 15 }],
    ["I'd like a coupon for 20% off my next order", 'generate_coupon', { percent: 20 }],
    ['Can I get a voucher?', 'generate_coupon', { percent: 10 }],
  ])('ecommerce: %j calls %s %j', (text, name, args) => {
    expect(callFor(ECOMMERCE, text)).toEqual({ name, args });
  });

  test('a message without an order number uses the latest one the user named', () => {
    expect(callFor(ECOMMERCE, 'Where is order 1003?', 'Can I get a 10% discount?')).toEqual({ name: 'apply_discount', args: { order_id: '1003', percent: 10 } });
    expect(callFor(ECOMMERCE, 'Where is order 1001?', 'And order 1002?', 'Please track it')).toEqual({ name: 'get_tracking_info', args: { order_id: '1002' } });
    expect(callFor(ECOMMERCE, 'Hello', 'Where is my order?')).toBeUndefined();
    expect(callFor(ECOMMERCE, 'Hello', '10% off please')).toBeUndefined();
  });

  test('only a tool the request offers is called', () => {
    expect(callFor(['calculator'], 'Where is order 1001?')).toBeUndefined();
    // order_lookup has no cancel_order: the offline model answers in words.
    expect(callFor(['get_order_status', 'get_tracking_info'], 'Please cancel order 1001')).toBeUndefined();
    expect(callFor(['cancel_order'], 'Please cancel order 1001')).toEqual({ name: 'cancel_order', args: { order_id: '1001' } });
    expect(demoToolCall(request(ECOMMERCE, ['Where is order 1001?'], { tool_choice: 'none' }), 'Where is order 1001?')).toBeUndefined();
    expect(callFor(ECOMMERCE, 'What are your opening hours?')).toBeUndefined();
  });

  test.each([
    ['What plan is account acme on?', 'get_subscription', { account_id: 'acme' }],
    ['How many seats does account globex have?', 'get_subscription', { account_id: 'globex' }],
    ['Upgrade account acme to enterprise with 30 seats', 'change_plan', { account_id: 'acme', plan: 'enterprise', seats: 30 }],
    ['Please downgrade account Umbrella to pro', 'change_plan', { account_id: 'umbrella', plan: 'pro' }],
  ])('saas: %j calls %s %j', (text, name, args) => {
    expect(callFor(SAAS, text)).toEqual({ name, args });
  });

  test('saas: a follow-up uses the account named before; "my account plan" names none', () => {
    expect(callFor(SAAS, 'What plan is account globex on?', 'Switch it to pro')).toEqual({ name: 'change_plan', args: { account_id: 'globex', plan: 'pro' } });
    expect(callFor(SAAS, 'What is my account plan?')).toBeUndefined();
  });

  test.each([
    ["What's the balance of ACC-100?", 'get_balance', { account_id: 'ACC-100' }],
    ['Show the last 3 transactions of acc-100', 'list_transactions', { account_id: 'ACC-100', limit: 3 }],
    ['Freeze my card ending in 4242, it was stolen', 'freeze_card', { card_last4: '4242', reason: 'card reported stolen' }],
    ['Please block card 1881', 'freeze_card', { card_last4: '1881' }],
    ['I want to dispute TX-5003 because I never received the laptop', 'dispute_transaction', { transaction_id: 'TX-5003', reason: 'I never received the laptop' }],
    ['dispute tx-6002', 'dispute_transaction', { transaction_id: 'TX-6002', reason: 'the customer does not recognise this payment' }],
  ])('fintech: %j calls %s %j', (text, name, args) => {
    expect(callFor(FINTECH, text)).toEqual({ name, args });
  });

  test('fintech: a follow-up uses the account named before', () => {
    expect(callFor(FINTECH, 'Hi, my account is ACC-200', 'What is my balance?')).toEqual({ name: 'get_balance', args: { account_id: 'ACC-200' } });
  });
});
