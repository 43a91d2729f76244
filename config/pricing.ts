import { z } from 'zod';

/** USD per million tokens, per model. */
export const PriceTable = z.record(z.object({ inputPerMTok: z.number().nonnegative(), outputPerMTok: z.number().nonnegative() }));
export type PriceTable = z.infer<typeof PriceTable>;

/** Defaults; KEEL_PRICE_TABLE (JSON) adds or overrides models. */
export const DEFAULT_PRICES: PriceTable = {
  'keel-local': { inputPerMTok: 0, outputPerMTok: 0 },
  'gpt-4o-mini': { inputPerMTok: 0.15, outputPerMTok: 0.6 },
  'gpt-4o': { inputPerMTok: 2.5, outputPerMTok: 10 },
};

/** Cost in USD, rounded to 8 decimals (the column's scale); an unknown model costs 0. */
export function costOf(table: PriceTable, model: string, usage: { inputTokens: number; outputTokens: number }): number {
  const price = table[model];
  if (!price) return 0;
  const raw = (usage.inputTokens * price.inputPerMTok + usage.outputTokens * price.outputPerMTok) / 1_000_000;
  return Math.round(raw * 1e8) / 1e8;
}
