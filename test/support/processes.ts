import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

export const ROOT = path.resolve(__dirname, '../..');

export interface Spawned {
  child: ChildProcess;
  lines: string[];
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Runs one of the project's entry points as a real child process, as production does. */
export function spawnEntry(entry: string, env: NodeJS.ProcessEnv, opts: { prefix?: string[] } = {}): Spawned {
  // KEEL_CHILD_NODE_ARGS passes extra node flags (e.g. --cpu-prof) to the children.
  const nodeArgs = process.env.KEEL_CHILD_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  // A prefix (e.g. `prlimit --nofile=…  --`) execs node in its place: the child's pid stays node's.
  const [cmd, ...args] = [...(opts.prefix ?? []), process.execPath, ...nodeArgs, '--import', 'tsx', path.join(ROOT, entry)];
  const child = spawn(cmd!, args, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  const onLine = (line: string) => {
    lines.push(line);
    if (process.env.KEEL_TEST_VERBOSE) process.stderr.write(`[${path.basename(path.dirname(entry))}] ${line}\n`);
    for (const w of [...waiters]) {
      const m = w.pattern.exec(line);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  readline.createInterface({ input: child.stdout! }).on('line', onLine);
  readline.createInterface({ input: child.stderr! }).on('line', onLine);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    lines,
    waitForLine(pattern, timeoutMs = 30_000) {
      for (const line of lines) {
        const m = pattern.exec(line);
        if (m) return Promise.resolve(m);
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${entry}: no line matching ${pattern} within ${timeoutMs} ms\n${lines.slice(-20).join('\n')}`)), timeoutMs);
        waiters.push({ pattern, resolve: (m) => (clearTimeout(timer), resolve(m)) });
        void exited.then(() => {
          clearTimeout(timer);
          reject(new Error(`${entry} exited before printing ${pattern}\n${lines.slice(-20).join('\n')}`));
        });
      });
    },
    async kill(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
