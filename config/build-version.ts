import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..');

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** The `.git` directory of `root`, following a worktree's `gitdir:` file; its shared (common) directory holds the refs. */
function gitDirs(root: string): { gitDir: string; commonDir: string } | undefined {
  const dotGit = path.join(root, '.git');
  if (!existsSync(dotGit)) return undefined;
  let gitDir = dotGit;
  if (statSync(dotGit).isFile()) {
    const target = /^gitdir:\s*(.+)$/m.exec(readText(dotGit) ?? '')?.[1]?.trim();
    if (!target) return undefined;
    gitDir = path.resolve(root, target);
  }
  const common = readText(path.join(gitDir, 'commondir'))?.trim();
  return { gitDir, commonDir: common ? path.resolve(gitDir, common) : gitDir };
}

/** The commit HEAD names, read from the files (no git binary): a detached HEAD, a loose ref or packed-refs. */
export function gitHead(root: string = ROOT): string | undefined {
  try {
    const dirs = gitDirs(root);
    if (!dirs) return undefined;
    const head = readText(path.join(dirs.gitDir, 'HEAD'))?.trim();
    if (!head) return undefined;
    if (/^[0-9a-f]{40,64}$/.test(head)) return head;
    const ref = /^ref:\s*(\S+)$/.exec(head)?.[1];
    if (!ref) return undefined;
    for (const dir of [dirs.gitDir, dirs.commonDir]) {
      const loose = readText(path.join(dir, ref))?.trim();
      if (loose && /^[0-9a-f]{40,64}$/.test(loose)) return loose;
    }
    const packed = readText(path.join(dirs.commonDir, 'packed-refs')) ?? '';
    for (const line of packed.split('\n')) {
      const [sha, name] = line.trim().split(/\s+/);
      if (name === ref && sha && /^[0-9a-f]{40,64}$/.test(sha)) return sha;
    }
    return undefined;
  } catch {
    return undefined;
  }
}

/**
 * What this build calls itself: KEEL_BUILD_VERSION when set, else package.json's version, with
 * `+<git short SHA>` when a readable .git directory names the commit (a checkout; an image
 * built without .git reports the version alone).
 */
export function computeBuildVersion(configured: string | undefined, root: string = ROOT): string {
  if (configured) return configured;
  let version = 'unknown';
  try {
    const parsed = JSON.parse(readText(path.join(root, 'package.json')) ?? '{}') as { version?: unknown };
    if (typeof parsed.version === 'string' && parsed.version) version = parsed.version;
  } catch {
    // A package.json that cannot be read leaves 'unknown'.
  }
  const sha = gitHead(root);
  return sha ? `${version}+${sha.slice(0, 7)}` : version;
}

let cached: { configured: string | undefined; version: string } | undefined;

/** computeBuildVersion, worked out once per process (the worker's heartbeats and the API's /health). */
export function buildVersion(configured: string | undefined): string {
  if (!cached || cached.configured !== configured) cached = { configured, version: computeBuildVersion(configured) };
  return cached.version;
}
