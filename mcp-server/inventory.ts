import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';

/** What the demo warehouse holds at start (before any reservation). */
export const PRODUCTS: Readonly<Record<string, { name: string; stock: number }>> = {
  'SKU-1': { name: 'Blue mug', stock: 12 },
  'SKU-2': { name: 'Red kettle', stock: 3 },
  'SKU-3': { name: 'Green teapot', stock: 0 },
};

export interface Reservation {
  reservationId: string;
  sku: string;
  quantity: number;
  /** The caller's `_meta.idempotencyKey`: a second call with it returns this reservation instead of making another. */
  idempotencyKey: string | null;
  createdAt: string;
}

export class InventoryError extends Error {}

/**
 * The demo MCP server's effects: stock reservations, in memory or, with a state file, in a JSON
 * file re-read before every operation (so the tests, and every copy of a stdio server, see one
 * state) and replaced atomically after every change.
 */
export class Inventory {
  private reservations: Reservation[] = [];

  constructor(private readonly stateFile?: string) {}

  lookup(sku: string): { sku: string; name: string; available: number } {
    this.load();
    const product = PRODUCTS[sku];
    if (!product) throw new InventoryError(`No product has the SKU "${sku}" (known: ${Object.keys(PRODUCTS).join(', ')})`);
    return { sku, name: product.name, available: this.available(sku) };
  }

  reserve(sku: string, quantity: number, idempotencyKey: string | null): Reservation & { applied: 'now' | 'already'; available: number } {
    this.load();
    const earlier = idempotencyKey === null ? undefined : this.reservations.find((r) => r.idempotencyKey === idempotencyKey);
    if (earlier) return { ...earlier, applied: 'already', available: this.available(earlier.sku) };
    const available = this.lookup(sku).available;
    if (quantity > available) throw new InventoryError(`Only ${available} of ${sku} left; cannot reserve ${quantity}`);
    const reservation: Reservation = { reservationId: `res_${randomUUID().slice(0, 8)}`, sku, quantity, idempotencyKey, createdAt: new Date().toISOString() };
    this.reservations.push(reservation);
    this.save();
    return { ...reservation, applied: 'now', available: available - quantity };
  }

  list(): Reservation[] {
    this.load();
    return [...this.reservations];
  }

  private available(sku: string): number {
    const reserved = this.reservations.filter((r) => r.sku === sku).reduce((sum, r) => sum + r.quantity, 0);
    return (PRODUCTS[sku]?.stock ?? 0) - reserved;
  }

  private load(): void {
    if (!this.stateFile || !existsSync(this.stateFile)) return;
    this.reservations = (JSON.parse(readFileSync(this.stateFile, 'utf8')) as { reservations: Reservation[] }).reservations;
  }

  private save(): void {
    if (!this.stateFile) return;
    const tmp = `${this.stateFile}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify({ reservations: this.reservations }, null, 2));
    renameSync(tmp, this.stateFile);
  }
}
