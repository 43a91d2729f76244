import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DefaultLogger, Runtime, Worker, type ReplayWorkerOptions } from '@temporalio/worker';
import { bundleWorkflows } from '../scripts/bundle-workflows';
import { tracingWorkerOptions } from '../worker/tracing';
import { historyFromJsonText, sessionWorkflowIdOf } from './support/history-json';

/**
 * Versioning coverage (docs/design/002-workflow-versioning.md): every session history recorded
 * by scripts/record-histories.ts, from code that may be running in some deployment, must replay
 * on the workflow code as it is now, with the plain bundle and the traced one. A failure names
 * the history: the change alters the commands that history's workflow issued, so it must be
 * guarded with patched() (or the history is kept and a new one recorded, see the design note).
 *
 * Replay is local: no Temporal server, no worker process, no database.
 */

const DIR = path.join(__dirname, 'histories');
const README = path.join(DIR, 'README.md');

const onDisk = readdirSync(DIR)
  .filter((f) => f.endsWith('.json'))
  .sort();
/** Every history the README describes: its lines `- \`<file>.json\`: what it covers`. */
const listed = [...readFileSync(README, 'utf8').matchAll(/^- `([^`/]+\.json)`/gm)].map((m) => m[1]!).sort();

test('test/histories holds every history its README lists, and nothing else', () => {
  expect(onDisk.length).toBeGreaterThan(0);
  expect({ missing: listed.filter((f) => !onDisk.includes(f)), unlisted: onDisk.filter((f) => !listed.includes(f)) }).toEqual({ missing: [], unlisted: [] });
});

const histories = onDisk.map((file) => {
  const history = historyFromJsonText(readFileSync(path.join(DIR, file), 'utf8'));
  return { file, history, workflowId: sessionWorkflowIdOf(history, `replay-${file}`) };
});

beforeAll(() => {
  try {
    Runtime.install({ logger: new DefaultLogger('ERROR') });
  } catch {
    // Already installed in this process: its logger stays.
  }
});

const bundles: [string, () => Promise<ReplayWorkerOptions>][] = [
  ['plain bundle', async () => ({ workflowBundle: { codePath: await bundleWorkflows() } })],
  // The traced bundle's interceptors call the worker's `exporter` sink: the no-op one here.
  ['traced bundle', async () => ({ workflowBundle: { codePath: await bundleWorkflows({ tracing: true }) }, sinks: tracingWorkerOptions(undefined).sinks })],
];

describe.each(bundles)('on the %s', (_name, options) => {
  /** The replay error of each history, by file; one replay worker replays them all, one after another. */
  const errors = new Map<string, Error | undefined>();
  beforeAll(async () => {
    const replay = Worker.runReplayHistories({ ...(await options()), replayName: 'keel-replay' }, histories.map(({ history, workflowId }) => ({ history, workflowId })));
    let i = 0;
    for await (const result of replay) errors.set(histories[i++]!.file, result.error);
  }, 180_000);

  test.each(onDisk)('%s replays', (file) => {
    expect(errors.has(file)).toBe(true);
    const error = errors.get(file);
    if (error) throw new Error(`${file} does not replay on the current workflow code (${error.name}): ${error.message}`);
  });
});
