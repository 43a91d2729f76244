import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Context, Next } from 'koa';

/**
 * Serves the web console (docs/console.md) from its built directory at `/`, on the API's own
 * origin, before authentication: the files are public, the data they fetch is not. Every GET
 * that is not the API's (`/api/…`, `/metrics`) gets a file of the build, or `index.html` (the
 * console routes in the URL's hash, so any other path is the app). Files resolve strictly
 * inside the directory: no `..`, no dot files, no symlink out of it.
 */

/** Where `npm run console:build` writes the console (KEEL_CONSOLE_DIR overrides it). */
export const DEFAULT_CONSOLE_DIR = path.resolve(__dirname, '..', 'web', 'dist');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.webp': 'image/webp',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/** Vite names built assets `<name>-<hash>.<ext>` under assets/: their content never changes under that name. */
const HASHED_ASSET = /^\/assets\/[^/]+-[A-Za-z0-9_-]{8,}\.[a-z0-9]+$/;
const ONE_YEAR_SECONDS = 31_536_000;
/** A Host header that can go into the policy as it is. */
const SAFE_HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

function isApiPath(p: string): boolean {
  return p === '/api' || p.startsWith('/api/') || p === '/metrics' || p.startsWith('/metrics/');
}

/** Scripts, styles, images and fonts from this origin only; fetches and WebSockets to it only; no frames, no plugins. */
export function contentSecurityPolicy(host: string | undefined): string {
  const sockets = host && SAFE_HOST.test(host) ? ` ws://${host} wss://${host}` : '';
  return [
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    `connect-src 'self'${sockets}`,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
}

const NO_BUILD_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Keel console not built</title></head>
<body><h1>The Keel console is not built</h1>
<p>Run <code>npm run console:build</code> (or <code>npm start</code>, which builds it) and reload this page.
The API itself is at <a href="/api/v1/health">/api/v1/health</a>.</p></body></html>
`;

function inside(root: string, candidate: string): boolean {
  return candidate === root || candidate.startsWith(root + path.sep);
}

interface Found {
  file: string;
  size: number;
  mtimeMs: number;
}

/** The regular file at `urlPath` inside `root`, or null (missing, a directory, or outside the root). Refuses what must never be served. */
async function resolveFile(root: string, urlPath: string): Promise<Found | null | 'refused'> {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return 'refused';
  }
  if (decoded.includes('\0') || decoded.includes('\\')) return 'refused';
  const segments = decoded.split('/').filter((s) => s !== '');
  if (segments.some((s) => s === '..' || s.startsWith('.'))) return 'refused';
  const candidate = path.resolve(root, ...segments);
  if (!inside(root, candidate)) return 'refused';
  try {
    const info = await stat(candidate);
    if (!info.isFile()) return null;
    // A symlink inside the build must not lead out of it.
    const [realRoot, realFile] = await Promise.all([realpath(root), realpath(candidate)]);
    if (!inside(realRoot, realFile)) return 'refused';
    return { file: candidate, size: info.size, mtimeMs: info.mtimeMs };
  } catch {
    return null;
  }
}

function send(ctx: Context, found: Found, cacheControl: string): void {
  ctx.set('cache-control', cacheControl);
  ctx.set('last-modified', new Date(found.mtimeMs).toUTCString());
  ctx.etag = `W/"${found.size.toString(16)}-${Math.floor(found.mtimeMs).toString(16)}"`;
  ctx.type = TYPES[path.extname(found.file).toLowerCase()] ?? 'application/octet-stream';
  ctx.status = 200;
  if (ctx.fresh) {
    ctx.status = 304;
    return;
  }
  // Koa sends no body for HEAD and destroys the stream when the response ends.
  ctx.body = createReadStream(found.file);
  ctx.length = found.size;
}

export function consoleMiddleware(opts: { dir?: string | undefined }) {
  const root = path.resolve(opts.dir ?? DEFAULT_CONSOLE_DIR);
  return async (ctx: Context, next: Next) => {
    if ((ctx.method !== 'GET' && ctx.method !== 'HEAD') || isApiPath(ctx.path)) return next();
    ctx.set('content-security-policy', contentSecurityPolicy(ctx.get('host') || undefined));
    ctx.set('x-content-type-options', 'nosniff');
    ctx.set('referrer-policy', 'no-referrer');
    ctx.set('x-frame-options', 'DENY');
    const found = await resolveFile(root, ctx.path);
    // A 404 without a body: errorMiddleware answers it with the NOT_FOUND envelope.
    if (found === 'refused') return void (ctx.status = 404);
    if (found && path.basename(found.file) !== 'index.html') {
      return send(ctx, found, HASHED_ASSET.test(ctx.path) ? `public, max-age=${ONE_YEAR_SECONDS}, immutable` : 'no-cache');
    }
    // A missing asset is a 404: answering the page instead would hand HTML to a <script>.
    if (ctx.path.startsWith('/assets/')) return void (ctx.status = 404);
    const index = await resolveFile(root, '/index.html');
    if (index === null || index === 'refused') {
      ctx.status = 503;
      ctx.set('cache-control', 'no-store');
      ctx.type = 'text/html; charset=utf-8';
      ctx.body = NO_BUILD_PAGE;
      return;
    }
    // The page names the current hashed assets: always revalidated.
    send(ctx, index, 'no-cache');
  };
}
