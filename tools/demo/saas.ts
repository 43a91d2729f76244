import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { parseArgs, ToolInputError, type Tool } from '../tool';
import { applyOnce, idArg, money, type Applied } from './write-once';

/** The SaaS template's tools (agents/templates/saas.yaml) on the demo_plans and demo_subscriptions tables. */

const CURRENCY = 'USD';
const PLANS = ['free', 'starter', 'pro', 'enterprise'] as const;
const AccountId = idArg(/^[a-z0-9][a-z0-9_-]{0,63}$/i, 'an account ID, e.g. acme').transform((id) => id.toLowerCase());
const accountIdParameter = { type: 'string', description: 'The account ID, e.g. "acme".' };

const SubscriptionRow = z.object({
  account_id: z.string(),
  company: z.string(),
  plan: z.enum(PLANS),
  seats: z.number(),
  status: z.enum(['trialing', 'active', 'past_due', 'cancelled']),
  renews_on: z.string().nullable(),
  price_per_seat_cents: z.number(),
  max_seats: z.number(),
});
type SubscriptionRow = z.infer<typeof SubscriptionRow>;

async function findSubscription(db: CommonQueryMethods, accountId: string, opts: { forUpdate?: boolean } = {}): Promise<SubscriptionRow> {
  const row = await db.maybeOne(sql.type(SubscriptionRow)`
    SELECT s.account_id, s.company, s.plan, s.seats, s.status, s.renews_on::text AS renews_on, p.price_per_seat_cents, p.max_seats
    FROM demo_subscriptions s JOIN demo_plans p ON p.id = s.plan
    WHERE s.account_id = ${accountId}
    ${opts.forUpdate ? sql.fragment`FOR UPDATE OF s` : sql.fragment``}`);
  if (!row) throw new ToolInputError(`account ${accountId} not found`);
  return row;
}

export interface SubscriptionView {
  accountId: string;
  company: string;
  plan: SubscriptionRow['plan'];
  seats: number;
  maxSeats: number;
  status: SubscriptionRow['status'];
  renewsOn: string | null;
  pricePerSeat: string;
  monthlyTotal: string;
  currency: string;
}

function viewOf(row: SubscriptionRow): SubscriptionView {
  return {
    accountId: row.account_id,
    company: row.company,
    plan: row.plan,
    seats: row.seats,
    maxSeats: row.max_seats,
    status: row.status,
    renewsOn: row.renews_on,
    pricePerSeat: money(row.price_per_seat_cents),
    monthlyTotal: money(row.price_per_seat_cents * row.seats),
    currency: CURRENCY,
  };
}

const AccountArgs = z.object({ account_id: AccountId }).strict();
type AccountArgs = z.infer<typeof AccountArgs>;

export const getSubscription: Tool<AccountArgs> = {
  definition: {
    name: 'get_subscription',
    description: "Looks up an account's subscription: plan (free, starter, pro or enterprise), seats, status, renewal date and monthly price.",
    parameters: { type: 'object', properties: { account_id: accountIdParameter }, required: ['account_id'], additionalProperties: false },
    permission: 'read',
    requiresApproval: false,
    timeoutMs: 5_000,
    retry: { maxAttempts: 3 },
  },
  parse: (args) => parseArgs(AccountArgs, args),
  async execute({ account_id }, ctx): Promise<SubscriptionView> {
    return viewOf(await findSubscription(ctx.pool, account_id));
  },
};

const ChangePlanArgs = z
  .object({
    account_id: AccountId,
    plan: z.enum(PLANS),
    seats: z.number().int().min(1).max(10_000).optional(),
  })
  .strict();
type ChangePlanArgs = z.infer<typeof ChangePlanArgs>;

export type ChangePlanResult = SubscriptionView & { previousPlan: SubscriptionRow['plan']; previousSeats: number };

const PlanRow = z.object({ price_per_seat_cents: z.number(), max_seats: z.number() });

export const changePlan: Tool<ChangePlanArgs> = {
  definition: {
    name: 'change_plan',
    description:
      "Moves an account to another plan, and optionally another number of seats (unchanged when left out). Each plan has a seat limit (free 3, starter 10, pro 100, enterprise 10000); cancelled subscriptions cannot change.",
    parameters: {
      type: 'object',
      properties: {
        account_id: accountIdParameter,
        plan: { type: 'string', enum: [...PLANS] },
        seats: { type: 'integer', minimum: 1, maximum: 10_000 },
      },
      required: ['account_id', 'plan'],
      additionalProperties: false,
    },
    permission: 'write',
    requiresApproval: true,
    timeoutMs: 5_000,
    retry: { maxAttempts: 3 },
    // demo_actions keeps one result per idempotency key (write-once.ts).
    idempotent: true,
  },
  parse: (args) => parseArgs(ChangePlanArgs, args),
  execute: ({ account_id, plan, seats }, ctx): Promise<Applied<ChangePlanResult>> =>
    applyOnce(ctx, 'change_plan', async (tx) => {
      const row = await findSubscription(tx, account_id, { forUpdate: true });
      if (row.status === 'cancelled') throw new ToolInputError(`the subscription of account ${row.account_id} is cancelled; it can no longer change plan`);
      const newSeats = seats ?? row.seats;
      if (plan === row.plan && newSeats === row.seats) throw new ToolInputError(`account ${row.account_id} is already on the ${plan} plan with ${newSeats} seats`);
      const target = await tx.one(sql.type(PlanRow)`SELECT price_per_seat_cents, max_seats FROM demo_plans WHERE id = ${plan}`);
      if (newSeats > target.max_seats) throw new ToolInputError(`the ${plan} plan allows at most ${target.max_seats} seats, and account ${row.account_id} would have ${newSeats}`);
      await tx.query(sql.unsafe`UPDATE demo_subscriptions SET plan = ${plan}, seats = ${newSeats}, updated_at = now() WHERE account_id = ${row.account_id}`);
      return { ...viewOf(await findSubscription(tx, row.account_id)), previousPlan: row.plan, previousSeats: row.seats };
    }),
};

export const saasTools: Tool[] = [getSubscription, changePlan];
