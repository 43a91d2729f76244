import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { parseArgs, ToolInputError, type Tool } from '../tool';
import { applyOnce, idArg, money, type Applied } from './write-once';

/** The fintech template's tools (agents/templates/fintech.yaml) on the demo_bank_accounts, demo_cards and demo_transactions tables. */

const AccountId = idArg(/^ACC-\d{1,9}$/i, 'an account number, e.g. ACC-100').transform((id) => id.toUpperCase());
const accountIdParameter = { type: 'string', description: 'The account number, e.g. "ACC-100".' };
export const MAX_TRANSACTIONS = 50;
const DEFAULT_TRANSACTIONS = 10;

const AccountRow = z.object({ id: z.string(), holder: z.string(), balance_cents: z.coerce.number(), currency: z.string() });
type AccountRow = z.infer<typeof AccountRow>;

async function findAccount(db: CommonQueryMethods, id: string): Promise<AccountRow> {
  const row = await db.maybeOne(sql.type(AccountRow)`SELECT id, holder, balance_cents, currency FROM demo_bank_accounts WHERE id = ${id}`);
  if (!row) throw new ToolInputError(`account ${id} not found`);
  return row;
}

const readTool = { permission: 'read', requiresApproval: false, timeoutMs: 5_000, retry: { maxAttempts: 3 } } as const;
// demo_actions keeps one result per idempotency key (write-once.ts): a repeat has no second effect.
const writeTool = { permission: 'write', requiresApproval: true, timeoutMs: 5_000, retry: { maxAttempts: 3 }, idempotent: true } as const;

const BalanceArgs = z.object({ account_id: AccountId }).strict();
type BalanceArgs = z.infer<typeof BalanceArgs>;

export interface Balance {
  accountId: string;
  holder: string;
  balance: string;
  currency: string;
}

export const getBalance: Tool<BalanceArgs> = {
  definition: {
    name: 'get_balance',
    description: "Gives an account's current balance.",
    parameters: { type: 'object', properties: { account_id: accountIdParameter }, required: ['account_id'], additionalProperties: false },
    ...readTool,
  },
  parse: (args) => parseArgs(BalanceArgs, args),
  async execute({ account_id }, ctx): Promise<Balance> {
    const row = await findAccount(ctx.pool, account_id);
    return { accountId: row.id, holder: row.holder, balance: money(row.balance_cents), currency: row.currency };
  },
};

const TransactionRow = z.object({
  id: z.string(),
  posted_on: z.string(),
  merchant: z.string(),
  amount_cents: z.coerce.number(),
  status: z.enum(['posted', 'disputed']),
  dispute_reason: z.string().nullable(),
});
type TransactionRow = z.infer<typeof TransactionRow>;

export interface TransactionView {
  transactionId: string;
  postedOn: string;
  merchant: string;
  /** Negative for money going out. */
  amount: string;
  status: TransactionRow['status'];
  disputeReason?: string;
}

function transactionOf(row: TransactionRow): TransactionView {
  return {
    transactionId: row.id,
    postedOn: row.posted_on,
    merchant: row.merchant,
    amount: money(row.amount_cents),
    status: row.status,
    ...(row.dispute_reason === null ? {} : { disputeReason: row.dispute_reason }),
  };
}

const ListArgs = z.object({ account_id: AccountId, limit: z.number().int().min(1).max(MAX_TRANSACTIONS).default(DEFAULT_TRANSACTIONS) }).strict();
type ListArgs = z.infer<typeof ListArgs>;

export const listTransactions: Tool<ListArgs> = {
  definition: {
    name: 'list_transactions',
    description: `Lists an account's most recent transactions, newest first (${DEFAULT_TRANSACTIONS} unless limit says otherwise, at most ${MAX_TRANSACTIONS}).`,
    parameters: {
      type: 'object',
      properties: { account_id: accountIdParameter, limit: { type: 'integer', minimum: 1, maximum: MAX_TRANSACTIONS } },
      required: ['account_id'],
      additionalProperties: false,
    },
    ...readTool,
  },
  parse: (args) => parseArgs(ListArgs, args),
  async execute({ account_id, limit }, ctx): Promise<{ accountId: string; currency: string; transactions: TransactionView[] }> {
    const account = await findAccount(ctx.pool, account_id);
    const rows = await ctx.pool.any(sql.type(TransactionRow)`
      SELECT id, posted_on::text AS posted_on, merchant, amount_cents, status, dispute_reason
      FROM demo_transactions WHERE account_id = ${account.id}
      ORDER BY posted_on DESC, id DESC LIMIT ${limit}`);
    return { accountId: account.id, currency: account.currency, transactions: rows.map(transactionOf) };
  },
};

const FreezeArgs = z
  .object({
    card_last4: idArg(/^\d{4}$/, 'the last four digits of the card, e.g. 4242'),
    reason: z.string().trim().min(1).max(500).optional(),
  })
  .strict();
type FreezeArgs = z.infer<typeof FreezeArgs>;

export interface FreezeResult {
  cardLast4: string;
  accountId: string;
  status: 'frozen';
  reason: string;
}

const CardRow = z.object({ last4: z.string(), account_id: z.string(), status: z.enum(['active', 'frozen']), frozen_reason: z.string().nullable() });

export const freezeCard: Tool<FreezeArgs> = {
  definition: {
    name: 'freeze_card',
    description: 'Freezes a payment card (lost, stolen, or a charge the holder does not recognise): no payment goes through until it is unfrozen.',
    parameters: {
      type: 'object',
      properties: {
        card_last4: { type: 'string', pattern: '^[0-9]{4}$', description: 'The last four digits of the card.' },
        reason: { type: 'string', minLength: 1, maxLength: 500 },
      },
      required: ['card_last4'],
      additionalProperties: false,
    },
    ...writeTool,
  },
  parse: (args) => parseArgs(FreezeArgs, args),
  execute: ({ card_last4, reason }, ctx): Promise<Applied<FreezeResult>> =>
    applyOnce(ctx, 'freeze_card', async (tx) => {
      const card = await tx.maybeOne(sql.type(CardRow)`SELECT last4, account_id, status, frozen_reason FROM demo_cards WHERE last4 = ${card_last4} FOR UPDATE`);
      if (!card) throw new ToolInputError(`card ending in ${card_last4} not found`);
      if (card.status === 'frozen') throw new ToolInputError(`card ending in ${card_last4} is already frozen (${card.frozen_reason ?? 'no reason given'})`);
      const why = reason ?? 'requested by the card holder';
      await tx.query(sql.unsafe`UPDATE demo_cards SET status = 'frozen', frozen_reason = ${why}, updated_at = now() WHERE last4 = ${card_last4}`);
      return { cardLast4: card.last4, accountId: card.account_id, status: 'frozen' as const, reason: why };
    }),
};

const DisputeArgs = z
  .object({
    transaction_id: idArg(/^TX-\d{1,9}$/i, 'a transaction ID, e.g. TX-5003').transform((id) => id.toUpperCase()),
    reason: z.string().trim().min(1).max(500),
  })
  .strict();
type DisputeArgs = z.infer<typeof DisputeArgs>;

export type DisputeResult = TransactionView & { accountId: string };

export const disputeTransaction: Tool<DisputeArgs> = {
  definition: {
    name: 'dispute_transaction',
    description: 'Opens a dispute on a card payment the holder does not recognise or did not get what they paid for. Credits (money coming in) and transactions already disputed are refused.',
    parameters: {
      type: 'object',
      properties: {
        transaction_id: { type: 'string', description: 'The transaction ID, e.g. "TX-5003".' },
        reason: { type: 'string', minLength: 1, maxLength: 500, description: "The holder's reason, in a few words." },
      },
      required: ['transaction_id', 'reason'],
      additionalProperties: false,
    },
    ...writeTool,
  },
  parse: (args) => parseArgs(DisputeArgs, args),
  execute: ({ transaction_id, reason }, ctx): Promise<Applied<DisputeResult>> =>
    applyOnce(ctx, 'dispute_transaction', async (tx) => {
      const row = await tx.maybeOne(sql.type(TransactionRow.extend({ account_id: z.string() }))`
        SELECT id, account_id, posted_on::text AS posted_on, merchant, amount_cents, status, dispute_reason
        FROM demo_transactions WHERE id = ${transaction_id} FOR UPDATE`);
      if (!row) throw new ToolInputError(`transaction ${transaction_id} not found`);
      if (row.status === 'disputed') throw new ToolInputError(`transaction ${row.id} is already disputed (${row.dispute_reason ?? 'no reason given'})`);
      if (row.amount_cents >= 0) throw new ToolInputError(`transaction ${row.id} is a credit of ${money(row.amount_cents)}, not a payment: there is nothing to dispute`);
      await tx.query(sql.unsafe`UPDATE demo_transactions SET status = 'disputed', dispute_reason = ${reason} WHERE id = ${row.id}`);
      return { ...transactionOf({ ...row, status: 'disputed', dispute_reason: reason }), accountId: row.account_id };
    }),
};

export const fintechTools: Tool[] = [getBalance, listTransactions, freezeCard, disputeTransaction];
