import { offers, textOf, type ChatRequest, type Reply } from './reply';

/**
 * How the offline model calls the agent templates' demo tools (tools/demo/, docs/templates.md):
 * a few fixed phrasings per tool, so a template can be tried, and tested, without a real model.
 * Each domain reads the user's last message for an intent; an ID it needs and the message lacks
 * comes from the latest user message that has one ("10% off" after "where is order 1001?").
 * A call is made only for a tool the request offers.
 */

interface Call {
  name: string;
  args: Record<string, unknown>;
}

interface Said {
  /** The user's last message. */
  text: string;
  /** Every user message of the conversation, oldest first (the last one included). */
  userTexts: string[];
}

/** The first match's group 1 in the newest user message that has one. */
function latest(said: Said, find: (text: string) => string | undefined): string | undefined {
  for (const text of [...said.userTexts, said.text].reverse()) {
    const found = find(text);
    if (found !== undefined) return found;
  }
  return undefined;
}

function group(pattern: RegExp): (text: string) => string | undefined {
  return (text) => pattern.exec(text)?.[1];
}

/** "10%", "10 %", "10 percent". */
function percentIn(text: string): number | undefined {
  const match = /(\d{1,4})\s*(?:%|percent\b)/i.exec(text);
  return match ? Number(match[1]) : undefined;
}

/** The reason the user gave, after "because" / "since" / "reason:". */
function reasonIn(text: string): string | undefined {
  const reason = /\b(?:because|since|reason:)\s*(.+?)[.!]*$/is.exec(text.trim())?.[1]?.trim();
  return reason ? reason.slice(0, 500) : undefined;
}

// E-commerce: "order 1001", "#1001", or a bare number of 4 to 12 digits not part of another ID.
const orderIdIn = (text: string) => group(/\border\s*(?:number|no\.?)?\s*#?\s*(\d{3,12})\b/i)(text) ?? group(/#(\d{3,12})\b/)(text) ?? group(/(?<![\w-])(\d{4,12})\b(?!\s*%)/)(text);

/** Default percentage of a coupon asked for without one. */
export const DEFAULT_COUPON_PERCENT = 10;

function orderChanges(text: string): Record<string, unknown> | undefined {
  const changes: Record<string, unknown> = {};
  const address = /\baddress\b.*?\bto\s+(.+?)[.!]*$/is.exec(text.trim())?.[1]?.trim();
  if (address) changes.shipping_address = address;
  const quantity = /\bquantity\s+of\s+([A-Za-z0-9-]+)\s+to\s+(\d{1,3})\b/i.exec(text);
  const removed = /\bremove\s+(?:the\s+)?([A-Za-z]+-\d+)\b/i.exec(text);
  if (quantity) changes.items = [{ sku: quantity[1]!.toUpperCase(), quantity: Number(quantity[2]) }];
  else if (removed) changes.items = [{ sku: removed[1]!.toUpperCase(), quantity: 0 }];
  return Object.keys(changes).length ? changes : undefined;
}

function ecommerce(said: Said, can: (tool: string) => boolean): Call | undefined {
  const { text } = said;
  const orderId = () => latest(said, orderIdIn);
  const percent = percentIn(text);
  if (can('generate_coupon') && (/\b(coupon|promo(?:tion)?\s+code|voucher)\b/i.test(text))) return { name: 'generate_coupon', args: { percent: percent ?? DEFAULT_COUPON_PERCENT } };
  if (can('apply_discount') && (percent !== undefined && /\b(off|discount|reduc\w*)\b/i.test(text))) {
    const id = orderId();
    return id ? { name: 'apply_discount', args: { order_id: id, percent } } : undefined;
  }
  if (can('cancel_order') && (/\bcancel\b/i.test(text))) {
    const id = orderId();
    const reason = reasonIn(text);
    return id ? { name: 'cancel_order', args: { order_id: id, ...(reason ? { reason } : {}) } } : undefined;
  }
  if (can('modify_order') && (/\b(change|modify|update|edit)\b/i.test(text))) {
    const id = orderId();
    const changes = orderChanges(text);
    return id && changes ? { name: 'modify_order', args: { order_id: id, ...changes } } : undefined;
  }
  if (can('get_tracking_info') && (/\btrack(?:ing)?\b/i.test(text))) {
    const id = orderId();
    return id ? { name: 'get_tracking_info', args: { order_id: id } } : undefined;
  }
  // A bare "order 1001" is a lookup only when the message asks for no action another agent takes.
  const asksForAction = /\b(cancel|change|modify|update|edit|coupon|discount|voucher)\b/i.test(text);
  if (can('get_order_status') && (/\b(where|status)\b/i.test(text) || (!asksForAction && /\border\b/i.test(text) && orderIdIn(text)))) {
    const id = orderId();
    return id ? { name: 'get_order_status', args: { order_id: id } } : undefined;
  }
  return undefined;
}

// SaaS: "account acme".
const NOT_AN_ACCOUNT = new Set(['id', 'is', 'to', 'on', 'for', 'the', 'and', 'with', 'has', 'plan', 'please', 'number', 'name', 'details']);
function accountNameIn(text: string): string | undefined {
  const name = /\baccount\s+(?:id\s+)?["'“]?([a-z0-9][a-z0-9_-]*)/i.exec(text)?.[1]?.toLowerCase();
  return name && !NOT_AN_ACCOUNT.has(name) ? name : undefined;
}

function saas(said: Said, can: (tool: string) => boolean): Call | undefined {
  const { text } = said;
  const plan = /\b(free|starter|pro|enterprise)\b/i.exec(text)?.[1]?.toLowerCase();
  if (can('change_plan') && (plan && /\b(upgrade|downgrade|switch|change|move)\b/i.test(text))) {
    const account = latest(said, accountNameIn);
    const seats = /\b(\d{1,5})\s*seats?\b/i.exec(text)?.[1];
    return account ? { name: 'change_plan', args: { account_id: account, plan, ...(seats ? { seats: Number(seats) } : {}) } } : undefined;
  }
  if (can('get_subscription') && (/\b(subscription|plan|seats?|renew\w*|billing)\b/i.test(text))) {
    const account = latest(said, accountNameIn);
    return account ? { name: 'get_subscription', args: { account_id: account } } : undefined;
  }
  return undefined;
}

// Banking: "ACC-100", "TX-5003", "card 4242" / "card ending in 4242".
const bankAccountIn = (text: string) => group(/\b(ACC-\d{1,9})\b/i)(text)?.toUpperCase();
const transactionIn = (text: string) => group(/\b(TX-\d{1,9})\b/i)(text)?.toUpperCase();
const cardIn = group(/\bcard\b\D{0,24}?(?<![\w-])(\d{4})\b/i);

function fintech(said: Said, can: (tool: string) => boolean): Call | undefined {
  const { text } = said;
  if (can('freeze_card') && (/\b(freeze|block|lock)\b/i.test(text))) {
    const card = latest(said, cardIn);
    const reason = reasonIn(text) ?? (/\bstolen\b/i.test(text) ? 'card reported stolen' : /\blost\b/i.test(text) ? 'card reported lost' : undefined);
    return card ? { name: 'freeze_card', args: { card_last4: card, ...(reason ? { reason } : {}) } } : undefined;
  }
  if (can('dispute_transaction') && (/\b(dispute|contest|unauthori[sz]ed)\b/i.test(text))) {
    const transaction = latest(said, transactionIn);
    return transaction ? { name: 'dispute_transaction', args: { transaction_id: transaction, reason: reasonIn(text) ?? 'the customer does not recognise this payment' } } : undefined;
  }
  if (can('list_transactions') && (/\b(transactions?|statement|history|spent|payments)\b/i.test(text))) {
    const account = latest(said, bankAccountIn);
    const limit = /\b(?:last|latest|recent)\s+(\d{1,2})\b/i.exec(text)?.[1];
    return account ? { name: 'list_transactions', args: { account_id: account, ...(limit ? { limit: Number(limit) } : {}) } } : undefined;
  }
  if (can('get_balance') && (/\bbalance\b/i.test(text))) {
    const account = latest(said, bankAccountIn);
    return account ? { name: 'get_balance', args: { account_id: account } } : undefined;
  }
  return undefined;
}

/**
 * The demo tool call the user's last message asks for, when the request offers that tool; else
 * undefined (the caller answers as it would have). Each domain is asked in turn: one whose
 * intent's tool is not offered leaves the message to the next.
 */
export function demoToolCall(request: ChatRequest, lastUserText: string): Reply | undefined {
  const said: Said = { text: lastUserText, userTexts: request.messages.filter((m) => m.role === 'user').map((m) => textOf(m.content)) };
  const can = (tool: string) => offers(request, tool);
  for (const domain of [ecommerce, saas, fintech]) {
    const call = domain(said, can);
    if (call && can(call.name)) return { kind: 'tool_calls', calls: [{ name: call.name, arguments: JSON.stringify(call.args) }] };
  }
  return undefined;
}
