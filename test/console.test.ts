import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Koa from 'koa';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { consoleMiddleware, contentSecurityPolicy } from '../api/console';
import { CONSOLE_DIST, ensureConsoleBuilt } from '../scripts/console-build';
import { ROOT } from './support/processes';
import { ADMIN_KEY, eventually, startStack, type Stack } from './support/stack';
import { switchableProxy } from './support/tcp-proxy';

/**
 * The web console (docs/console.md): how the API serves it, then the app itself in a real
 * headless Chromium against the real stack, its page origin a TCP proxy to the API so a test
 * can cut the browser's connections mid-reply.
 */

const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'console');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const WAIT_MS = 15_000;

interface Raw {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A GET with the path sent exactly as given (fetch would normalize `..` away). */
function rawRequest(base: string, rawPath: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<Raw> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, path: rawPath, method: opts.method ?? 'GET', headers: opts.headers ?? {} }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function serve(dir: string): Promise<{ base: string; close: () => Promise<void> }> {
  const app = new Koa();
  app.silent = true;
  app.use(consoleMiddleware({ dir }));
  const server = http.createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

describe('serving the console', () => {
  let tmp: string;
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'keel-console-'));
  });
  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  test('without a build, / answers a page that says how to build it, and a missing asset is a 404', async () => {
    const empty = path.join(tmp, 'empty');
    await mkdir(empty);
    const server = await serve(empty);
    try {
      const page = await rawRequest(server.base, '/');
      expect(page.status).toBe(503);
      expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(page.body).toContain('npm run console:build');
      expect((await rawRequest(server.base, '/assets/index-abcdefgh.js')).status).toBe(404);
      // A directory that does not exist at all is the same.
      const missing = await serve(path.join(tmp, 'never-made'));
      expect((await rawRequest(missing.base, '/chat')).status).toBe(503);
      await missing.close();
    } finally {
      await server.close();
    }
  });

  test('files resolve inside the build only: no .., no encoded .., no dot files, no symlink out', async () => {
    const dir = path.join(tmp, 'build');
    await mkdir(path.join(dir, 'assets'), { recursive: true });
    await writeFile(path.join(dir, 'index.html'), '<!doctype html><div id="root"></div>');
    await writeFile(path.join(dir, 'assets', 'app-abcdefgh.js'), 'console.log(1)');
    await writeFile(path.join(dir, '.secret'), 'secret');
    await writeFile(path.join(tmp, 'outside.txt'), 'outside the build');
    await symlink(path.join(tmp, 'outside.txt'), path.join(dir, 'leak.txt'));
    const server = await serve(dir);
    try {
      const asset = await rawRequest(server.base, '/assets/app-abcdefgh.js');
      expect(asset.status).toBe(200);
      expect(asset.body).toBe('console.log(1)');
      expect(asset.headers['content-type']).toBe('text/javascript; charset=utf-8');
      expect(asset.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      const head = await rawRequest(server.base, '/assets/app-abcdefgh.js', { method: 'HEAD' });
      expect([head.status, head.headers['content-length'], head.body]).toEqual([200, '14', '']);
      expect((await rawRequest(server.base, '/assets/app-abcdefgh.js', { headers: { 'if-none-match': asset.headers.etag! } })).status).toBe(304);
      const index = await rawRequest(server.base, '/');
      expect([index.headers['content-type'], index.headers['cache-control']]).toEqual(['text/html; charset=utf-8', 'no-cache']);
      for (const raw of ['/../outside.txt', '/..%2foutside.txt', '/%2e%2e/outside.txt', '/assets/..%2f..%2foutside.txt', '/%2e%2e%2f%2e%2e%2foutside.txt', '/.secret', '/%2esecret', '/leak.txt', '/assets/%5c..%5c..%5coutside.txt', '/%00index.html']) {
        const res = await rawRequest(server.base, raw);
        expect({ raw, status: res.status }).toEqual({ raw, status: 404 });
        expect(res.body).not.toContain('outside the build');
        expect(res.body).not.toContain('secret');
      }
      // Clean paths are still served: the refusals above are not a broken server.
      expect((await rawRequest(server.base, '/index.html')).body).toContain('id="root"');
      expect((await rawRequest(server.base, '/any/app/route')).body).toContain('id="root"');
      // Not GET/HEAD: not the console's; Koa's own 404 here.
      expect((await rawRequest(server.base, '/', { method: 'POST' })).status).toBe(404);
    } finally {
      await server.close();
    }
  });

  test('the policy names the socket origin only when the Host header is a plain host', () => {
    expect(contentSecurityPolicy('127.0.0.1:3000')).toContain("connect-src 'self' ws://127.0.0.1:3000 wss://127.0.0.1:3000");
    expect(contentSecurityPolicy('[::1]:3000')).toContain("connect-src 'self' ws://[::1]:3000 wss://[::1]:3000");
    expect(contentSecurityPolicy("evil.example; script-src 'unsafe-inline'")).toContain("connect-src 'self';");
    expect(contentSecurityPolicy(undefined)).toContain("connect-src 'self';");
  });
});

describe('the console in a browser', () => {
  let stack: Stack;
  let proxy: Awaited<ReturnType<typeof switchableProxy>>;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let origin: string;
  let alice: string;
  let chatSession: string;
  let reconnectSession: string;
  const socketUrls: string[] = [];

  beforeAll(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    await ensureConsoleBuilt();
    [stack, browser] = await Promise.all([
      startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml'), KEEL_CONSOLE_DIR: CONSOLE_DIST } }),
      chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS }),
    ]);
    proxy = await switchableProxy(new URL(stack.base));
    origin = proxy.url.replace(/\/$/, '');
    alice = await stack.issueToken('alice');
    context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
    context.setDefaultTimeout(WAIT_MS);
    page = await context.newPage();
    page.on('websocket', (ws) => socketUrls.push(ws.url()));
  }, 90_000);

  afterAll(async () => {
    await browser?.close();
    await proxy?.close();
    await stack?.stop();
  });

  const shot = (name: string, p: Page = page) => p.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
  const asAlice = (method: string, url: string, body?: unknown) => stack.request(method, url, body, { authorization: `Bearer ${alice}` });
  /** A link of the page menu (a session's link may say "approvals" too). */
  const nav = (name: string) => page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name, exact: true });
  const sessionIdOfUrl = (url: string) => /#\/chat\/([^/?#]+)/.exec(url)?.[1];

  /**
   * Records every text each reply bubble shows, in order, for the whole life of the page. (The
   * functions given to evaluate run in the page; `page` is the browser's globalThis there.)
   */
  async function recordReplies(p: Page) {
    await p.evaluate(() => {
      const g = globalThis as any;
      if (g.__replies) return;
      const replies: Record<string, string[]> = {};
      g.__replies = replies;
      const sample = () => {
        g.document.querySelectorAll('[data-stream-id]').forEach((el: any) => {
          // Stream IDs are per session: the page's session (in the hash) is part of the key.
          const id = `${g.location.hash}|${el.getAttribute('data-stream-id')}`;
          const text = (el.querySelector('[data-testid="assistant-text"]')?.textContent ?? '') as string;
          const seen = (replies[id] ??= []);
          if (seen[seen.length - 1] !== text) seen.push(text);
        });
      };
      new g.MutationObserver(sample).observe(g.document.body, { subtree: true, childList: true, characterData: true });
      sample();
    });
  }
  const recorded = (streamId: string): Promise<string[]> => page.evaluate((id) => (globalThis as any).__replies[`${(globalThis as any).location.hash}|${id}`] ?? [], streamId);
  const inPage = <T>(p: Page, fn: (g: any) => T): Promise<T> => p.evaluate(`(${fn.toString()})(globalThis)`) as Promise<T>;
  const setToken = (token: string) => ((globalThis as any).sessionStorage as { setItem(k: string, v: string): void }).setItem('keel.token', token);

  async function newSessionInUi(title: string): Promise<string> {
    await page.goto(`${origin}/#/chat`);
    await page.getByLabel('Agent').selectOption('default');
    await page.getByLabel('Title (optional)').fill(title);
    await page.getByRole('button', { name: 'Start session' }).click();
    await page.getByRole('heading', { name: title, exact: true }).waitFor();
    return (await eventually(async () => sessionIdOfUrl(page.url()), WAIT_MS, 'the session in the URL'))!;
  }

  async function send(text: string) {
    await page.getByLabel('Message', { exact: true }).fill(text);
    await page.getByRole('button', { name: 'Send' }).click();
  }

  test('the API serves the built console at / with a strict policy, and API paths stay the API\'s', async () => {
    const index = await fetch(`${stack.base}/`);
    expect(index.status).toBe(200);
    const html = await index.text();
    expect(html).toContain('<div id="root"></div>');
    const csp = index.headers.get('content-security-policy')!;
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain(`connect-src 'self' ws://${new URL(stack.base).host} wss://${new URL(stack.base).host}`);
    expect(csp).not.toContain('unsafe-inline');
    expect(index.headers.get('cache-control')).toBe('no-cache');
    // The page's own hashed script: cached for good, with a JavaScript type.
    const script = /src="(\/assets\/[^"]+\.js)"/.exec(html)![1]!;
    const asset = await fetch(`${stack.base}${script}`);
    expect([asset.status, asset.headers.get('content-type'), asset.headers.get('cache-control')]).toEqual([200, 'text/javascript; charset=utf-8', 'public, max-age=31536000, immutable']);
    await asset.arrayBuffer();
    // Any other page path is the app; the API's paths never are.
    expect(await (await fetch(`${stack.base}/chat/some-session`)).text()).toBe(html);
    const api = await fetch(`${stack.base}/api/v1/no-such-route`);
    expect([api.status, ((await api.json()) as { error: { code: string } }).error.code]).toEqual([401, 'UNAUTHORIZED']);
    const unknown = await stack.request('GET', '/api/v1/no-such-route');
    expect([unknown.status, unknown.body.error.code]).toEqual([404, 'NOT_FOUND']);
    expect((await stack.request('GET', '/assets/index-00000000.js')).body.error.code).toBe('NOT_FOUND');
    expect((await fetch(`${stack.base}/metrics`)).headers.get('content-type')).toContain('text/plain');
    const traversal = await rawRequest(stack.base, '/..%2f..%2fpackage.json');
    expect(traversal.status).toBe(404);
    expect(traversal.body).not.toContain('"name": "keel"');
  });

  test('signing in: a wrong token is refused, the right one opens the chat, and it is kept in sessionStorage only', async () => {
    const response = await page.goto(`${origin}/`);
    expect(response!.headers()['content-security-policy']).toContain("default-src 'self'");
    await page.getByRole('heading', { name: 'Keel console' }).waitFor();
    await shot('login');
    await page.getByLabel('API token').fill('not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('This token is not valid.').waitFor();
    await page.getByLabel('API token').fill(alice);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'New session' }).waitFor();
    await page.getByText('No sessions yet').waitFor();
    expect(await inPage(page, (g) => [g.sessionStorage.getItem('keel.token'), g.localStorage.length, g.document.cookie])).toEqual([alice, 0, '']);
  });

  test('a new session streams its reply into the chat', async () => {
    chatSession = await newSessionInUi('Console chat');
    await recordReplies(page);
    // Slow tokens, so the reply shows while it is written.
    stack.model.script(chatSession, { tokenDelayMs: 150 });
    await send('Hello console');
    await page.getByTestId('user-message').filter({ hasText: 'Hello console' }).waitFor();
    const reply = page.locator('[data-testid="assistant-message"][data-done="true"]').filter({ hasText: 'You said: Hello console.' });
    await reply.waitFor();
    const seen = await recorded((await reply.getAttribute('data-stream-id'))!);
    // Text that grew a word at a time, each a prefix of the reply: streamed, not pasted at the end.
    expect(seen.filter((t) => t !== '' && t !== 'You said: Hello console.').length).toBeGreaterThanOrEqual(2);
    for (const text of seen) expect('You said: Hello console.'.startsWith(text)).toBe(true);
    // The new session is in the list, newest first.
    await page.locator('.session-link').first().filter({ hasText: 'Console chat' }).waitFor();
  });

  test('a write tool waits for approval in the chat; the inbox gets a second one live; both are decided there, and the result shows in the chat', async () => {
    await page.goto(`${origin}/#/chat/${chatSession}`);
    await send('Save a note: buy milk');
    const card = page.getByTestId('approval-card');
    await card.waitFor();
    expect(await card.locator('.arguments').textContent()).toContain('"body": "buy milk"');
    await card.getByTestId('countdown').waitFor();
    await shot('chat');

    await nav('Approvals').click();
    const inbox = page.getByTestId('approval-card');
    await inbox.filter({ hasText: 'buy milk' }).waitFor();
    await page.locator('[data-testid="connection"]', { hasText: 'live' }).waitFor();
    // Another session asks while the inbox is open: the per-user socket brings it in.
    const other = (await asAlice('POST', '/api/v1/sessions', { title: 'Second' })).body.id as string;
    expect((await asAlice('POST', `/api/v1/sessions/${other}/messages`, { content: 'Save a note: call the bank' })).status).toBe(202);
    const second = inbox.filter({ hasText: 'call the bank' });
    await second.waitFor();
    await shot('approvals');
    // Oldest first.
    expect(await inbox.first().textContent()).toContain('buy milk');

    await second.getByLabel('Feedback (optional)').fill('not today');
    await second.getByRole('button', { name: 'Reject' }).click();
    await second.locator('.badge', { hasText: 'rejected' }).waitFor();
    await inbox.filter({ hasText: 'buy milk' }).getByRole('button', { name: 'Approve' }).click();
    await inbox.filter({ hasText: 'buy milk' }).locator('.badge', { hasText: 'approved' }).waitFor();
    const decided = await stack.db.query('SELECT name, status FROM tool_calls WHERE session_id IN ($1, $2) ORDER BY created_at', [chatSession, other]);
    expect(decided.rows.map((r) => r.name)).toEqual(['create_note', 'create_note']);

    await page.goto(`${origin}/#/chat/${chatSession}`);
    await page.locator('[data-testid="tool-result"][data-status="succeeded"]').waitFor();
    await page.locator('[data-testid="tool-call"] .badge', { hasText: 'approved by alice' }).waitFor();
    await page.locator('[data-testid="assistant-message"][data-done="true"]').filter({ hasText: 'Tool results:' }).waitFor();
    expect(await page.getByTestId('approval-card').count()).toBe(0);
  });

  test('a connection cut mid-reply shows the reconnect banner, then the reply goes on from where it stopped: complete, once, no text twice', async () => {
    reconnectSession = await newSessionInUi('Reconnect');
    await recordReplies(page);
    const words = Array.from({ length: 50 }, (_, i) => `w${i + 1}`);
    const full = `${words.join(' ')}.`;
    stack.model.script(reconnectSession, { reply: full, tokenDelayMs: 100 });
    await send('Tell me a long story');
    const bubble = page.getByTestId('assistant-message');
    const text = bubble.getByTestId('assistant-text');
    // Part of the reply is on screen.
    await eventually(async () => ((await text.textContent()) ?? '').length >= 20, WAIT_MS, 'some of the reply');
    const streamId = (await bubble.getAttribute('data-stream-id'))!;
    const endsBefore = await stack.db.query("SELECT count(*)::int AS n FROM session_events WHERE session_id = $1 AND type = 'stream.end'", [reconnectSession]);
    proxy.set('down');
    await page.getByTestId('reconnect-banner').waitFor();
    const atCut = (await recorded(streamId)).at(-1)!;
    await shot('reconnect');
    // The cut landed mid-reply: the server had not finished it, and the page showed some of it but not all.
    expect(endsBefore.rows[0].n).toBe(0);
    expect(atCut.length).toBeGreaterThan(0);
    expect(atCut.length).toBeLessThan(full.length);
    expect(full.startsWith(atCut)).toBe(true);

    proxy.set('up');
    await page.getByTestId('reconnect-banner').waitFor({ state: 'detached' });
    await page.locator(`[data-stream-id="${streamId}"][data-done="true"]`).waitFor();
    expect(await text.textContent()).toBe(full);

    const seen = await recorded(streamId);
    // Every text ever shown was a prefix of the reply: nothing repeated, nothing skipped.
    expect(seen.filter((t) => !full.startsWith(t))).toEqual([]);
    // And after the reconnect it went on growing a bit at a time (the live stream resumed, not just its end).
    const afterCut = seen.slice(seen.lastIndexOf(atCut) + 1);
    expect(afterCut.filter((t) => t.length > atCut.length && t.length < full.length).length).toBeGreaterThanOrEqual(1);
    // The resume named the last event and the characters already shown.
    const resume = socketUrls.filter((u) => u.includes(`/sessions/${reconnectSession}/ws`)).at(-1)!;
    expect(new URL(resume).searchParams.get('streamOffset')).toBe(String(atCut.length));
    expect(Number(new URL(resume).searchParams.get('after'))).toBeGreaterThan(0);
    // Exactly one reply, the whole of it once.
    expect(await bubble.count()).toBe(1);
    const all = (await page.locator('.messages').textContent()) ?? '';
    expect(all.split(full).length - 1).toBe(1);
    expect(await page.getByTestId('restarted').count()).toBe(0);
  });

  test('the replay shows each step of that conversation with its time and duration', async () => {
    await page.locator('.conversation-header').getByRole('link', { name: 'Replay' }).click();
    const steps = page.getByTestId('replay-step');
    await steps.filter({ hasText: 'Turn end' }).waitFor();
    const types = await steps.evaluateAll((els) => els.map((e) => e.getAttribute('data-type')));
    expect(types).toEqual(['user_message', 'agent_reply', 'turn_end']);
    expect(await steps.nth(0).textContent()).toContain('Tell me a long story');
    expect(await steps.nth(1).locator('.badge.duration').textContent()).toMatch(/^took \d/);
    expect(await steps.nth(1).locator('time').count()).toBe(1);
    await shot('replay');
    // The list of conversations leads to it too.
    await page.getByRole('link', { name: '← All conversations' }).click();
    await page.locator('tbody tr').nth(2).waitFor();
    expect(await page.locator('tbody tr').count()).toBe(3);
  });

  test('the dashboard shows figures for a user with conversations, and clear empty states for a fresh user', async () => {
    await nav('Dashboard').click();
    const conversations = page.getByTestId('stat').filter({ hasText: 'conversations' }).locator('.stat-value');
    await conversations.waitFor();
    expect(await conversations.textContent()).toBe('3');
    expect(await page.getByTestId('slo-badge').count()).toBe(4);
    // Releases, incidents and the import list need an admin token: said plainly.
    await page.getByText('Incidents needs an admin token.').waitFor();
    // No list route (405) or an admin-only one (403): either way an empty state that says so.
    await page.locator('section', { hasText: 'OpenAPI imports' }).getByTestId('unavailable').waitFor();
    await shot('dashboard');
    await page.getByRole('button', { name: 'Versions' }).first().click();
    await page.getByText('Versions and releases need an admin token.').waitFor();

    // An admin sees the versions, with the actions.
    const root = await stack.issueToken('root', true);
    const admin = await context.newPage();
    await admin.addInitScript(setToken, root);
    await admin.goto(`${origin}/#/dashboard`);
    await admin.locator('.agent', { hasText: 'default' }).getByRole('button', { name: 'Versions' }).click();
    await admin.locator('.agent', { hasText: 'default' }).getByRole('button', { name: 'Roll back' }).waitFor();
    await admin.getByText('No incidents.').waitFor();
    await admin.close();

    // A fresh user: nothing yet, everywhere.
    const bob = await stack.issueToken('bob');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('API token').fill(bob);
    await page.getByRole('button', { name: 'Sign in' }).click();
    // Signing in keeps the page the user was on.
    await page.getByTestId('analytics-empty').waitFor();
    await page.getByTestId('slo-badge').nth(3).waitFor();
    expect(await page.getByTestId('slo-badge').filter({ hasText: 'no data' }).count()).toBe(4);
    await shot('dashboard-empty');
    await nav('Approvals').click();
    await page.getByTestId('no-approvals').waitFor();
    await nav('Replay').click();
    await page.getByText('No conversations yet.').waitFor();
    await nav('Chat').click();
    await page.getByText('No sessions yet').waitFor();
  });

  test('a token the API refuses sends the user back to the login page, saying why', async () => {
    const res = await stack.request('POST', '/api/v1/admin/tokens', { userId: 'carol' }, { 'x-api-key': ADMIN_KEY, authorization: '' });
    await page.evaluate(setToken, res.body.token as string);
    await page.goto(`${origin}/#/dashboard`);
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    expect((await stack.request('DELETE', `/api/v1/admin/tokens/${res.body.tokenId}`, undefined, { 'x-api-key': ADMIN_KEY, authorization: '' })).status).toBe(204);
    // Revocation reaches REST within KEEL_TOKEN_CACHE_MS (1 s in tests).
    await eventually(async () => (await stack.request('GET', '/api/v1/sessions', undefined, { authorization: `Bearer ${res.body.token}` })).status === 401, WAIT_MS, 'the revocation');
    // The console hears it from whichever comes first: its live socket, closed for the revoked
    // token, or the 401 of its next request (this click). Either way it must end on the login page.
    const replay = nav('Replay');
    if (await replay.isVisible()) await replay.click({ timeout: 2_000 }).catch(() => undefined);
    await page.getByTestId('login-notice').waitFor();
    expect(await page.getByTestId('login-notice').textContent()).toContain('sign in again');
    expect(await inPage(page, (g) => g.sessionStorage.getItem('keel.token'))).toBeNull();
  });

  test('at 375 px wide no page scrolls sideways', async () => {
    const narrow = await browser.newContext({ viewport: { width: 375, height: 812 } });
    narrow.setDefaultTimeout(WAIT_MS);
    await narrow.addInitScript(setToken, alice);
    const p = await narrow.newPage();
    const pages: [string, string, () => Promise<unknown>][] = [
      ['chat', `#/chat/${chatSession}`, () => p.locator('[data-testid="tool-result"]').waitFor()],
      ['sessions', '#/chat', () => p.locator('.session-link').first().waitFor()],
      ['approvals', '#/approvals', () => p.getByTestId('no-approvals').waitFor()],
      ['replay', `#/replay/${reconnectSession}`, () => p.getByTestId('replay-step').first().waitFor()],
      ['dashboard', '#/dashboard', () => p.getByTestId('slo-badge').first().waitFor()],
    ];
    for (const [name, hash, ready] of pages) {
      await p.goto(`${origin}/${hash}`);
      await ready();
      const [scrollWidth, innerWidth] = await inPage(p, (g) => [g.document.documentElement.scrollWidth as number, g.innerWidth as number]);
      expect({ name, scrollWidth }).toEqual({ name, scrollWidth: innerWidth });
      await shot(`mobile-${name}`, p);
    }
    await narrow.close();
  });
});
