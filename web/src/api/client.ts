import type { ErrorBody } from './types';

/**
 * REST calls to the API on the same origin. The token lives in sessionStorage (this tab only,
 * gone when the tab closes); any 401 clears it and sends the user back to the login page.
 */

const TOKEN_KEY = 'keel.token';
const NOTICE_KEY = 'keel.loginNotice';

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.removeItem(NOTICE_KEY);
}

/** Forgets the token; `notice` is shown on the login page (why the user is there). */
export function clearToken(notice?: string): void {
  sessionStorage.removeItem(TOKEN_KEY);
  if (notice) sessionStorage.setItem(NOTICE_KEY, notice);
  else sessionStorage.removeItem(NOTICE_KEY);
}

export function takeLoginNotice(): string | null {
  return sessionStorage.getItem(NOTICE_KEY);
}

type UnauthorizedListener = (message: string) => void;
const unauthorizedListeners = new Set<UnauthorizedListener>();

export function onUnauthorized(listener: UnauthorizedListener): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

/** The token was refused: forget it and tell the app (which shows the login page). */
export function reportUnauthorized(message: string): void {
  clearToken(message);
  unauthorizedListeners.forEach((l) => l(message));
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }

  /** Forbidden (needs an admin token) or not offered by this API version. */
  get unavailable(): boolean {
    return this.status === 403 || this.status === 404 || this.status === 405;
  }
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  signal?: AbortSignal;
}

export async function api<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = {};
  const token = getToken();
  if (token) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, {
      method: opts.method ?? 'GET',
      headers,
      ...(opts.body === undefined ? {} : { body: JSON.stringify(opts.body) }),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  } catch (error) {
    if ((error as Error).name === 'AbortError') throw error;
    throw new ApiError(0, 'NETWORK_ERROR', 'The API cannot be reached. Check your connection and try again.');
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const body = (json as { error?: ErrorBody } | null)?.error;
    const error = new ApiError(res.status, body?.code ?? `HTTP_${res.status}`, body?.message ?? `The API answered ${res.status} ${res.statusText}`, body?.details);
    if (res.status === 401) reportUnauthorized('Your token was not accepted (it may have been revoked). Please sign in again.');
    throw error;
  }
  return json as T;
}

/** A query string from the defined values. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

export function wsUrl(path: string): string {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
}

export function newClientMessageId(): string {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}
