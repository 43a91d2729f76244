import { cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { ROOT } from './processes';

/** The memo key the modified session workflow writes first thing in every run: its value names the build. */
export const BUILD_MEMO_KEY = 'keelTestBuild';

const ANCHOR = '  const state = SessionState.fromInput(input);\n';

/**
 * A workflow bundle built from a copy of workflows/ and contracts/ in a temp directory, whose
 * sessionWorkflow first upserts a memo (`{ keelTestBuild: build }`): a command the real code
 * never issues, so no history recorded from the real code replays on it (a change that needed
 * patched() and did not get it). It still runs sessions normally, and the memo shows which
 * code ran a run. The real workflow code is never touched.
 */
export async function buildIncompatibleBundle(build: string): Promise<{ bundlePath: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'keel-incompatible-'));
  try {
    for (const sub of ['workflows', 'contracts']) await cp(path.join(ROOT, sub), path.join(dir, sub), { recursive: true });
    // Imports such as '@temporalio/workflow' resolve from the copy as from the real tree.
    await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
    const sessionFile = path.join(dir, 'workflows', 'session.ts');
    const source = await readFile(sessionFile, 'utf8');
    if (!source.includes(ANCHOR)) throw new Error(`workflows/session.ts no longer contains ${JSON.stringify(ANCHOR)}: update test/support/incompatible-bundle.ts`);
    const modified = [
      "import { upsertMemo as keelTestUpsertMemo } from '@temporalio/workflow';",
      source.replace(ANCHOR, `  keelTestUpsertMemo({ ${BUILD_MEMO_KEY}: ${JSON.stringify(build)} });\n${ANCHOR}`),
    ].join('\n');
    await writeFile(sessionFile, modified);
    const { code } = await bundleWorkflowCode({
      workflowsPath: path.join(dir, 'workflows'),
      logger: { trace() {}, debug() {}, info() {}, warn() {}, error: console.error, log() {} } as never,
    });
    await mkdir(path.join(dir, 'out'));
    const bundlePath = path.join(dir, 'out', `workflow-bundle-${build}.js`);
    await writeFile(bundlePath, code);
    return { bundlePath, cleanup: () => rm(dir, { recursive: true, force: true }) };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}
