import type { Tool } from '../tool';
import { ecommerceTools } from './ecommerce';
import { fintechTools } from './fintech';
import { saasTools } from './saas';

export { COUPON_CODE_PATTERN } from './ecommerce';

/**
 * The tools of the agent templates (agents/templates/, docs/templates.md), on the demo tables of
 * migration 010. Registered with the built-in tools; an agent that does not list them never sees them.
 */
export const demoTools: readonly Tool[] = [...ecommerceTools, ...saasTools, ...fintechTools];
