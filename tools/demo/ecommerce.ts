import { randomBytes } from 'node:crypto';
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { parseArgs, ToolInputError, type Tool } from '../tool';
import { applyOnce, idArg, money, Percent, type Applied } from './write-once';

/** The e-commerce template's tools (agents/templates/ecommerce.yaml) on the demo_orders, demo_discounts and demo_coupons tables. */

const CURRENCY = 'USD';
const OrderId = idArg(/^\d{1,12}$/, 'an order number, e.g. 1001');
const orderIdParameter = { type: 'string', description: 'The order number, e.g. "1001".' };

const Item = z.object({ sku: z.string(), name: z.string(), quantity: z.number().int(), unitPriceCents: z.number().int() });
type Item = z.infer<typeof Item>;
const OrderRow = z.object({
  id: z.string(),
  customer: z.string(),
  status: z.enum(['pending', 'paid', 'shipped', 'delivered', 'cancelled']),
  items: z.array(Item),
  shipping_address: z.string(),
  tracking_number: z.string().nullable(),
  carrier: z.string().nullable(),
  estimated_delivery: z.string().nullable(),
  delivered_on: z.string().nullable(),
  cancel_reason: z.string().nullable(),
  discount_percent: z.number().nullable(),
  updated_at: z.number(),
});
type OrderRow = z.infer<typeof OrderRow>;

async function findOrder(db: CommonQueryMethods, id: string, opts: { forUpdate?: boolean } = {}): Promise<OrderRow> {
  const row = await db.maybeOne(sql.type(OrderRow)`
    SELECT o.id, o.customer, o.status, o.items, o.shipping_address, o.tracking_number, o.carrier,
           o.estimated_delivery::text AS estimated_delivery, o.delivered_on::text AS delivered_on,
           o.cancel_reason, d.percent AS discount_percent, o.updated_at
    FROM demo_orders o LEFT JOIN demo_discounts d ON d.order_id = o.id
    WHERE o.id = ${id}
    ${opts.forUpdate ? sql.fragment`FOR UPDATE OF o` : sql.fragment``}`);
  if (!row) throw new ToolInputError(`order ${id} not found`);
  return row;
}

function totals(items: Item[], discountPercent: number | null): { subtotalCents: number; totalCents: number } {
  const subtotalCents = items.reduce((sum, i) => sum + i.quantity * i.unitPriceCents, 0);
  return { subtotalCents, totalCents: subtotalCents - Math.round((subtotalCents * (discountPercent ?? 0)) / 100) };
}

export interface OrderView {
  orderId: string;
  customer: string;
  status: OrderRow['status'];
  items: { sku: string; name: string; quantity: number; unitPrice: string }[];
  subtotal: string;
  discountPercent: number | null;
  total: string;
  currency: string;
  shippingAddress: string;
  cancelReason?: string;
  updatedAt: string;
}

function viewOf(row: OrderRow): OrderView {
  const { subtotalCents, totalCents } = totals(row.items, row.discount_percent);
  return {
    orderId: row.id,
    customer: row.customer,
    status: row.status,
    items: row.items.map((i) => ({ sku: i.sku, name: i.name, quantity: i.quantity, unitPrice: money(i.unitPriceCents) })),
    subtotal: money(subtotalCents),
    discountPercent: row.discount_percent,
    total: money(totalCents),
    currency: CURRENCY,
    shippingAddress: row.shipping_address,
    ...(row.cancel_reason === null ? {} : { cancelReason: row.cancel_reason }),
    updatedAt: new Date(row.updated_at).toISOString(),
  };
}

const readTool = { permission: 'read', requiresApproval: false, timeoutMs: 5_000, retry: { maxAttempts: 3 } } as const;
// demo_actions keeps one result per idempotency key (write-once.ts): a repeat has no second effect.
const writeTool = { permission: 'write', requiresApproval: true, timeoutMs: 5_000, retry: { maxAttempts: 3 }, idempotent: true } as const;

const OrderArgs = z.object({ order_id: OrderId }).strict();
type OrderArgs = z.infer<typeof OrderArgs>;

export const getOrderStatus: Tool<OrderArgs> = {
  definition: {
    name: 'get_order_status',
    description: "Looks up an order by its number: its status (pending, paid, shipped, delivered or cancelled), items, total and shipping address.",
    parameters: { type: 'object', properties: { order_id: orderIdParameter }, required: ['order_id'], additionalProperties: false },
    ...readTool,
  },
  parse: (args) => parseArgs(OrderArgs, args),
  async execute({ order_id }, ctx): Promise<OrderView> {
    return viewOf(await findOrder(ctx.pool, order_id));
  },
};

export interface TrackingInfo {
  orderId: string;
  status: OrderRow['status'];
  carrier: string | null;
  trackingNumber: string | null;
  estimatedDelivery: string | null;
  deliveredOn: string | null;
  /** Why there is no tracking yet, when there is none. */
  note?: string;
}

export const getTrackingInfo: Tool<OrderArgs> = {
  definition: {
    name: 'get_tracking_info',
    description: "Gives an order's shipment: carrier, tracking number, estimated delivery date, and the delivery date once delivered.",
    parameters: { type: 'object', properties: { order_id: orderIdParameter }, required: ['order_id'], additionalProperties: false },
    ...readTool,
  },
  parse: (args) => parseArgs(OrderArgs, args),
  async execute({ order_id }, ctx): Promise<TrackingInfo> {
    const row = await findOrder(ctx.pool, order_id);
    const info: TrackingInfo = {
      orderId: row.id,
      status: row.status,
      carrier: row.carrier,
      trackingNumber: row.tracking_number,
      estimatedDelivery: row.estimated_delivery,
      deliveredOn: row.delivered_on,
    };
    if (row.tracking_number !== null) return info;
    return { ...info, note: row.status === 'cancelled' ? `order ${row.id} was cancelled before it shipped` : `order ${row.id} has not been handed to a carrier yet` };
  },
};

/** Why an order in this status can no longer change, or undefined when it still can. */
function frozenBecause(row: OrderRow, action: string): string | undefined {
  if (row.status === 'shipped' || row.status === 'delivered') return `order ${row.id} has already been ${row.status} and can no longer be ${action}`;
  if (row.status === 'cancelled') return `order ${row.id} is already cancelled`;
  return undefined;
}

const CancelArgs = z.object({ order_id: OrderId, reason: z.string().trim().min(1).max(500).optional() }).strict();
type CancelArgs = z.infer<typeof CancelArgs>;

export interface CancelResult {
  orderId: string;
  previousStatus: OrderRow['status'];
  status: 'cancelled';
  reason: string;
  refund: string;
  currency: string;
}

export const cancelOrder: Tool<CancelArgs> = {
  definition: {
    name: 'cancel_order',
    description: 'Cancels an order that has not shipped yet (status pending or paid) and refunds what was paid. Shipped, delivered and cancelled orders are refused.',
    parameters: {
      type: 'object',
      properties: { order_id: orderIdParameter, reason: { type: 'string', minLength: 1, maxLength: 500, description: "The customer's reason, in a few words." } },
      required: ['order_id'],
      additionalProperties: false,
    },
    ...writeTool,
  },
  parse: (args) => parseArgs(CancelArgs, args),
  execute: ({ order_id, reason }, ctx): Promise<Applied<CancelResult>> =>
    applyOnce(ctx, 'cancel_order', async (tx) => {
      const row = await findOrder(tx, order_id, { forUpdate: true });
      const refused = frozenBecause(row, 'cancelled');
      if (refused) throw new ToolInputError(refused);
      const why = reason ?? 'requested by the customer';
      await tx.query(sql.unsafe`UPDATE demo_orders SET status = 'cancelled', cancel_reason = ${why}, updated_at = now() WHERE id = ${row.id}`);
      // Only a paid order has money to give back.
      const refundCents = row.status === 'paid' ? totals(row.items, row.discount_percent).totalCents : 0;
      return { orderId: row.id, previousStatus: row.status, status: 'cancelled' as const, reason: why, refund: money(refundCents), currency: CURRENCY };
    }),
};

const ModifyArgs = z
  .object({
    order_id: OrderId,
    shipping_address: z.string().trim().min(5).max(300).optional(),
    items: z
      .array(z.object({ sku: z.string().trim().min(1).max(40), quantity: z.number().int().min(0).max(20) }).strict())
      .min(1)
      .max(20)
      .optional(),
  })
  .strict()
  .refine((a) => a.shipping_address !== undefined || a.items !== undefined, 'nothing to change: give shipping_address or items');
type ModifyArgs = z.infer<typeof ModifyArgs>;

export type ModifyResult = OrderView & { changed: ('shipping_address' | 'items')[] };

export const modifyOrder: Tool<ModifyArgs> = {
  definition: {
    name: 'modify_order',
    description:
      "Changes an order that has not shipped yet: its shipping address, and/or the quantity of items already in it (quantity 0 removes an item; at least one item must remain). Returns the order as changed.",
    parameters: {
      type: 'object',
      properties: {
        order_id: orderIdParameter,
        shipping_address: { type: 'string', minLength: 5, maxLength: 300, description: 'The new shipping address, in full.' },
        items: {
          type: 'array',
          minItems: 1,
          maxItems: 20,
          description: 'New quantities of items in the order, by SKU.',
          items: {
            type: 'object',
            properties: { sku: { type: 'string' }, quantity: { type: 'integer', minimum: 0, maximum: 20 } },
            required: ['sku', 'quantity'],
            additionalProperties: false,
          },
        },
      },
      required: ['order_id'],
      additionalProperties: false,
    },
    ...writeTool,
  },
  parse: (args) => parseArgs(ModifyArgs, args),
  execute: ({ order_id, shipping_address, items }, ctx): Promise<Applied<ModifyResult>> =>
    applyOnce(ctx, 'modify_order', async (tx) => {
      const row = await findOrder(tx, order_id, { forUpdate: true });
      const refused = frozenBecause(row, 'changed');
      if (refused) throw new ToolInputError(refused);
      let newItems = row.items;
      if (items) {
        const unknown = items.filter((change) => !row.items.some((i) => i.sku === change.sku)).map((c) => c.sku);
        if (unknown.length) throw new ToolInputError(`order ${row.id} has no item ${unknown.join(', ')}; its items are ${row.items.map((i) => i.sku).join(', ')}`);
        const quantities = new Map(items.map((c) => [c.sku, c.quantity]));
        newItems = row.items.map((item) => ({ ...item, quantity: quantities.get(item.sku) ?? item.quantity })).filter((item) => item.quantity > 0);
        if (!newItems.length) throw new ToolInputError(`order ${row.id} must keep at least one item; to drop all of them, cancel the order`);
      }
      const address = shipping_address ?? row.shipping_address;
      await tx.query(sql.unsafe`
        UPDATE demo_orders SET items = ${sql.jsonb(newItems)}, shipping_address = ${address}, updated_at = now() WHERE id = ${row.id}`);
      const changed = [...(shipping_address === undefined ? [] : ['shipping_address' as const]), ...(items === undefined ? [] : ['items' as const])];
      return { ...viewOf(await findOrder(tx, row.id)), changed };
    }),
};

const DiscountArgs = z.object({ order_id: OrderId, percent: Percent }).strict();
type DiscountArgs = z.infer<typeof DiscountArgs>;

export interface DiscountResult {
  orderId: string;
  percent: number;
  previousTotal: string;
  total: string;
  currency: string;
}

export const applyDiscount: Tool<DiscountArgs> = {
  definition: {
    name: 'apply_discount',
    description: 'Takes a percentage off an order (a whole number from 1 to 100). An order takes one discount; cancelled orders take none.',
    parameters: {
      type: 'object',
      properties: { order_id: orderIdParameter, percent: { type: 'integer', minimum: 1, maximum: 100 } },
      required: ['order_id', 'percent'],
      additionalProperties: false,
    },
    ...writeTool,
  },
  parse: (args) => parseArgs(DiscountArgs, args),
  execute: ({ order_id, percent }, ctx): Promise<Applied<DiscountResult>> =>
    applyOnce(ctx, 'apply_discount', async (tx) => {
      const row = await findOrder(tx, order_id, { forUpdate: true });
      if (row.status === 'cancelled') throw new ToolInputError(`order ${row.id} is cancelled: there is nothing to discount`);
      if (row.discount_percent !== null) throw new ToolInputError(`order ${row.id} already has a ${row.discount_percent}% discount; an order takes one`);
      await tx.query(sql.unsafe`INSERT INTO demo_discounts (order_id, percent, session_id) VALUES (${row.id}, ${percent}, ${ctx.sessionId})`);
      await tx.query(sql.unsafe`UPDATE demo_orders SET updated_at = now() WHERE id = ${row.id}`);
      return {
        orderId: row.id,
        percent,
        previousTotal: money(totals(row.items, null).totalCents),
        total: money(totals(row.items, percent).totalCents),
        currency: CURRENCY,
      };
    }),
};

/** `SAVE<percent>-` and eight uppercase hexadecimal digits, e.g. SAVE15-9F3A0C7B. */
export const COUPON_CODE_PATTERN = /^SAVE(100|[1-9][0-9]?)-[0-9A-F]{8}$/;

const CouponArgs = z.object({ percent: Percent }).strict();
type CouponArgs = z.infer<typeof CouponArgs>;

export interface CouponResult {
  code: string;
  percent: number;
}

export const generateCoupon: Tool<CouponArgs> = {
  definition: {
    name: 'generate_coupon',
    description: 'Creates a single coupon code worth a percentage off a future order (a whole number from 1 to 100). Codes look like SAVE15-9F3A0C7B.',
    parameters: { type: 'object', properties: { percent: { type: 'integer', minimum: 1, maximum: 100 } }, required: ['percent'], additionalProperties: false },
    ...writeTool,
  },
  parse: (args) => parseArgs(CouponArgs, args),
  execute: ({ percent }, ctx): Promise<Applied<CouponResult>> =>
    applyOnce(ctx, 'generate_coupon', async (tx) => {
      // 2^32 codes per percentage: a collision is rare, and another draw settles it.
      for (;;) {
        const code = `SAVE${percent}-${randomBytes(4).toString('hex').toUpperCase()}`;
        const stored = await tx.maybeOneFirst(sql.type(z.object({ code: z.string() }))`
          INSERT INTO demo_coupons (code, percent, session_id) VALUES (${code}, ${percent}, ${ctx.sessionId})
          ON CONFLICT (code) DO NOTHING RETURNING code`);
        if (stored !== null) return { code: stored, percent };
      }
    }),
};

export const ecommerceTools: Tool[] = [getOrderStatus, getTrackingInfo, cancelOrder, modifyOrder, applyDiscount, generateCoupon];
