import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { WORKFLOW_INTERCEPTOR_MODULES } from '../worker/tracing';

const ROOT = path.resolve(__dirname, '..');
const SOURCE_DIRS = ['workflows', 'contracts'];

async function sourceHash(): Promise<string> {
  const hash = createHash('sha256');
  for (const dir of SOURCE_DIRS) {
    for (const file of (await readdir(path.join(ROOT, dir))).sort()) {
      hash.update(file).update(await readFile(path.join(ROOT, dir, file)));
    }
  }
  return hash.digest('hex').slice(0, 16);
}

/**
 * Bundles the workflow code once into .cache/ (keyed by a hash of its sources) so workers
 * start without webpack: production images and the test suite both use it. `tracing` adds the
 * OpenTelemetry workflow interceptors: a worker with tracing on needs that bundle. They add no
 * commands, so a history replays the same with either bundle.
 */
export async function bundleWorkflows({ tracing = false, outDir = path.join(ROOT, '.cache') }: { tracing?: boolean; outDir?: string } = {}): Promise<string> {
  const codePath = path.join(outDir, `workflow-bundle-${await sourceHash()}${tracing ? '-traced' : ''}.js`);
  if (existsSync(codePath)) return codePath;
  const { code } = await bundleWorkflowCode({ workflowsPath: path.join(ROOT, 'workflows'), workflowInterceptorModules: tracing ? WORKFLOW_INTERCEPTOR_MODULES : [], logger: { trace() {}, debug() {}, info() {}, warn: console.warn, error: console.error, log() {} } as never });
  await mkdir(outDir, { recursive: true });
  // Write then rename, so a concurrent reader never sees half a bundle.
  const tmp = `${codePath}.${process.pid}.tmp`;
  await writeFile(tmp, code);
  await rename(tmp, codePath);
  return codePath;
}

if (require.main === module) {
  bundleWorkflows({ tracing: process.argv.includes('--tracing') }).then((p) => console.log(p), (error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
