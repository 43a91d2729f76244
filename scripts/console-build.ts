import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';

/**
 * Builds the web console (web/ → web/dist, docs/console.md) when the build is missing or older
 * than its sources: `npm start` and the console's browser test call it, `npm run console:build`
 * always builds.
 */

const ROOT = path.resolve(__dirname, '..');
export const WEB_DIR = path.join(ROOT, 'web');
export const CONSOLE_DIST = path.join(WEB_DIR, 'dist');
const VITE_BIN = path.join(ROOT, 'node_modules', 'vite', 'bin', 'vite.js');
/** What the build is made from. */
const SOURCES = ['src', 'public', 'index.html', 'vite.config.mts'];

async function newestMtime(entry: string): Promise<number> {
  let info;
  try {
    info = await stat(entry);
  } catch {
    return 0;
  }
  if (!info.isDirectory()) return info.mtimeMs;
  const children = await readdir(entry);
  const times = await Promise.all(children.map((c) => newestMtime(path.join(entry, c))));
  return Math.max(info.mtimeMs, ...times);
}

/** `missing`: no web/dist/index.html; `stale`: a source changed after it was built. */
export async function consoleBuildState(): Promise<'fresh' | 'missing' | 'stale'> {
  let built: number;
  try {
    built = (await stat(path.join(CONSOLE_DIST, 'index.html'))).mtimeMs;
  } catch {
    return 'missing';
  }
  const sources = await Promise.all(SOURCES.map((s) => newestMtime(path.join(WEB_DIR, s))));
  return Math.max(...sources) > built ? 'stale' : 'fresh';
}

/** Runs `vite build web`; rejects with vite's output when it fails. */
export function buildConsole(): Promise<void> {
  if (!existsSync(VITE_BIN)) return Promise.reject(new Error('vite is not installed (a production install without dev dependencies cannot build the console)'));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VITE_BIN, 'build', WEB_DIR, '--logLevel', 'warn'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VITE_CONFIG_NATIVE_IGNORE_WARNING: 'true' } });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`vite build failed (${signal ?? code}):\n${output.trim()}`))));
  });
}

/** Builds the console unless web/dist is up to date; says what it did through `log`. */
export async function ensureConsoleBuilt(log: (line: string) => void = () => undefined): Promise<'fresh' | 'built'> {
  const state = await consoleBuildState();
  if (state === 'fresh') return 'fresh';
  log(state === 'missing' ? 'building the web console (web/dist is missing)' : 'rebuilding the web console (web/ changed since the last build)');
  const started = Date.now();
  await buildConsole();
  log(`web console built in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return 'built';
}
