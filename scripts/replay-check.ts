import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import { DefaultLogger, Runtime, Worker, type ReplayWorkerOptions } from '@temporalio/worker';
import { loadSettings, temporalAddressOf } from '../config/settings';
import { tracingWorkerOptions } from '../worker/tracing';
import { bundleWorkflows } from './bundle-workflows';

/**
 * Before a deploy: replays the histories of live workflows from a cluster against the workflow
 * bundle about to be deployed, and fails if the new code would not replay any of them
 * (docs/operations.md, "Deploying new workflow code"). Nothing is written to the cluster.
 *
 *   npm run replay-check -- [--query "<visibility query>"] [--bundle <path>] [--limit N] [--concurrency N]
 *                           [--address host:port] [--namespace ns] [--json]
 *   npm run replay-check -- --workflow-id <id>[:<runId>] [--workflow-id …] [--bundle <path>]
 *
 * Exit codes: 0 every history replayed; 1 at least one did not (non-determinism or another replay
 * failure); 2 none failed but the check is incomplete (the listing or a history fetch failed, or
 * more workflows matched than --limit); 3 bad arguments or configuration.
 */

export const DEFAULT_QUERY = "WorkflowType = 'sessionWorkflow' AND ExecutionStatus = 'Running'";
export const DEFAULT_LIMIT = 1_000;
export const DEFAULT_CONCURRENCY = 8;

type History = temporal.api.history.v1.IHistory;

export type ReplayStatus = 'ok' | 'nondeterministic' | 'replay-failed' | 'fetch-failed';

export interface ReplayCheckResult {
  workflowId: string;
  runId: string;
  status: ReplayStatus;
  /** Events in the fetched history (absent when it could not be fetched). */
  events?: number;
  /** The replay or fetch error, for every status but ok. */
  error?: string;
}

export interface ReplayCheckReport {
  query: string;
  bundlePath: string;
  results: ReplayCheckResult[];
  /** More workflows matched than `limit`: the rest were not checked. */
  truncated: boolean;
  /** The visibility listing itself failed (bad query, cluster unreachable): results holds what came before. */
  listError?: string;
  counts: Record<ReplayStatus, number>;
}

export interface ReplayCheckOptions {
  client: Client;
  /** A bundle from scripts/bundle-workflows.ts (plain or --tracing). */
  bundlePath: string;
  query?: string;
  /** Check these instead of what `query` lists (no run ID: the latest run). */
  executions?: { workflowId: string; runId?: string }[];
  /** At most this many workflows are checked. */
  limit?: number;
  /** Histories fetched at once (each one pages through its events), ahead of the replay. */
  concurrency?: number;
  /** Called with each result as it is known. */
  onResult?: (result: ReplayCheckResult) => void;
}

/** The error's message and its causes' (the client wraps gRPC errors: "Failed to list workflows" hides why). */
function message(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  return error.cause === undefined ? error.message : `${error.message}: ${message(error.cause)}`;
}

/** DeterminismViolationError (commands and history disagree) or ReplayError (any other workflow task failure on replay). */
function statusOf(error: Error): ReplayStatus {
  return error.name === 'DeterminismViolationError' ? 'nondeterministic' : 'replay-failed';
}

type Fetched = { workflowId: string; runId: string; history: History } | { workflowId: string; runId: string; error: string };
type Listed = { workflowId: string; runId?: string | undefined };

/** Fetches the histories of `executions`, `concurrency` at a time, yielding each as it arrives. */
async function* fetchHistories(client: Client, executions: AsyncIterable<Listed>, concurrency: number): AsyncGenerator<Fetched> {
  const inFlight = new Map<number, Promise<{ key: number; fetched: Fetched }>>();
  let next = 0;
  const fetch = async (key: number, workflowId: string, given: string | undefined) => {
    let runId = given ?? 'latest';
    try {
      const handle = client.workflow.getHandle(workflowId, given);
      if (given === undefined) runId = (await handle.describe()).runId;
      return { key, fetched: { workflowId, runId, history: await client.workflow.getHandle(workflowId, runId).fetchHistory() } };
    } catch (error) {
      return { key, fetched: { workflowId, runId, error: message(error) } };
    }
  };
  for await (const { workflowId, runId } of executions) {
    const key = next++;
    inFlight.set(key, fetch(key, workflowId, runId));
    if (inFlight.size >= concurrency) {
      const { key: done, fetched } = await Promise.race(inFlight.values());
      inFlight.delete(done);
      yield fetched;
    }
  }
  while (inFlight.size > 0) {
    const { key: done, fetched } = await Promise.race(inFlight.values());
    inFlight.delete(done);
    yield fetched;
  }
}

/** Replays the histories of the workflows `query` matches against the bundle at `bundlePath`. */
export async function replayCheck(opts: ReplayCheckOptions): Promise<ReplayCheckReport> {
  const query = opts.query ?? DEFAULT_QUERY;
  const limit = opts.limit ?? DEFAULT_LIMIT;
  const results: ReplayCheckResult[] = [];
  const record = (result: ReplayCheckResult) => {
    results.push(result);
    opts.onResult?.(result);
  };
  let truncated = false;
  let listError: string | undefined;

  // Visibility pages through the matches; one more than the limit tells whether it cut any off.
  async function* listed(): AsyncGenerator<Listed> {
    if (opts.executions) {
      yield* opts.executions.slice(0, limit);
      truncated = opts.executions.length > limit;
      return;
    }
    let seen = 0;
    try {
      for await (const execution of opts.client.workflow.list({ query, pageSize: Math.min(limit + 1, 1_000) })) {
        if (seen === limit) {
          truncated = true;
          return;
        }
        seen++;
        yield { workflowId: execution.workflowId, runId: execution.runId };
      }
    } catch (error) {
      listError = message(error);
    }
  }

  // The replay worker takes one history at a time and answers it before asking for the next, so
  // its i-th result is the i-th history handed to it.
  const handed: { workflowId: string; runId: string; events: number }[] = [];
  async function* replayable() {
    for await (const fetched of fetchHistories(opts.client, listed(), Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY))) {
      if ('error' in fetched) {
        record({ workflowId: fetched.workflowId, runId: fetched.runId, status: 'fetch-failed', error: fetched.error });
        continue;
      }
      handed.push({ workflowId: fetched.workflowId, runId: fetched.runId, events: fetched.history.events?.length ?? 0 });
      yield { workflowId: fetched.workflowId, history: fetched.history };
    }
  }

  const options: ReplayWorkerOptions = {
    workflowBundle: { codePath: opts.bundlePath },
    // A bundle built with --tracing calls the exporter sink; the no-op one is enough to replay.
    sinks: tracingWorkerOptions(undefined).sinks,
    replayName: 'keel-replay-check',
  };
  let i = 0;
  for await (const { error } of Worker.runReplayHistories(options, replayable())) {
    const { workflowId, runId, events } = handed[i++]!;
    record(error ? { workflowId, runId, events, status: statusOf(error), error: error.message } : { workflowId, runId, events, status: 'ok' });
  }

  const counts: Record<ReplayStatus, number> = { ok: 0, nondeterministic: 0, 'replay-failed': 0, 'fetch-failed': 0 };
  for (const r of results) counts[r.status]++;
  return { query: opts.executions ? `given workflow IDs: ${opts.executions.map((e) => e.workflowId).join(', ')}` : query, bundlePath: opts.bundlePath, results, truncated, ...(listError === undefined ? {} : { listError }), counts };
}

/** 1 when new code would break a live workflow; 2 when none failed but not everything was checked. */
export function exitCodeOf(report: ReplayCheckReport): number {
  if (report.counts.nondeterministic > 0 || report.counts['replay-failed'] > 0) return 1;
  if (report.counts['fetch-failed'] > 0 || report.listError !== undefined || report.truncated) return 2;
  return 0;
}

const LABELS: Record<ReplayStatus, string> = { ok: 'ok', nondeterministic: 'NONDETERMINISTIC', 'replay-failed': 'REPLAY FAILED', 'fetch-failed': 'NOT FETCHED' };

export function formatResult(r: ReplayCheckResult): string {
  const events = r.events === undefined ? '' : ` (${r.events} events)`;
  return `${LABELS[r.status].padEnd(16)} ${r.workflowId} run ${r.runId}${events}${r.error ? `: ${r.error.split('\n')[0]}` : ''}`;
}

export function formatSummary(report: ReplayCheckReport): string {
  const { counts } = report;
  const lines = [
    `${report.results.length} checked: ${counts.ok} ok, ${counts.nondeterministic} nondeterministic, ${counts['replay-failed']} failed to replay otherwise, ${counts['fetch-failed']} not fetched`,
  ];
  if (report.results.length === 0 && report.listError === undefined) lines.push('no workflow matched');
  if (report.truncated) lines.push(`more workflows match than --limit: the rest were not checked`);
  if (report.listError !== undefined) lines.push(`listing the workflows failed: ${report.listError}`);
  const code = exitCodeOf(report);
  lines.push(code === 0 ? 'PASS: every history replays on this bundle' : code === 1 ? 'FAIL: this bundle would break the workflows above (guard the change with patched(); docs/operations.md)' : 'INCOMPLETE: nothing failed, but not every workflow was checked');
  return lines.join('\n');
}

function positiveInt(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a positive integer, got ${JSON.stringify(value)}`);
  return n;
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        query: { type: 'string' },
        bundle: { type: 'string' },
        limit: { type: 'string' },
        concurrency: { type: 'string' },
        address: { type: 'string' },
        namespace: { type: 'string' },
        'workflow-id': { type: 'string', multiple: true },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
      strict: true,
    }).values;
  } catch (error) {
    console.error(`replay-check: ${message(error)}`);
    return 3;
  }
  if (args.help) {
    console.log('npm run replay-check -- [--query "<visibility query>" | --workflow-id <id>[:<runId>] ...] [--bundle <path>] [--limit N] [--concurrency N] [--address host:port] [--namespace ns] [--json]');
    return 0;
  }
  let limit: number;
  let concurrency: number;
  let address: string;
  let namespace: string;
  try {
    limit = positiveInt('--limit', args.limit, DEFAULT_LIMIT);
    concurrency = positiveInt('--concurrency', args.concurrency, DEFAULT_CONCURRENCY);
    const settings = loadSettings();
    address = args.address ?? temporalAddressOf(settings);
    namespace = args.namespace ?? settings.temporal.namespace;
  } catch (error) {
    console.error(`replay-check: ${message(error)}`);
    return 3;
  }
  // The replay worker's own warnings repeat each failure this script reports.
  Runtime.install({ logger: new DefaultLogger('ERROR'), telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' } } } });
  const bundlePath = args.bundle ?? (await bundleWorkflows());
  const query = args.query ?? DEFAULT_QUERY;
  const workflowIds = args['workflow-id'];
  if (workflowIds && args.query !== undefined) {
    console.error('replay-check: give --query or --workflow-id, not both');
    return 3;
  }
  const executions = workflowIds?.map((spec) => {
    // A run ID is a UUID; anything else after a colon is part of the workflow ID.
    const m = /^(.+):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i.exec(spec);
    return m ? { workflowId: m[1]!, runId: m[2]! } : { workflowId: spec };
  });
  let connection: Connection;
  try {
    connection = await Connection.connect({ address });
  } catch (error) {
    console.error(`replay-check: cannot reach Temporal at ${address}: ${message(error)}`);
    return 2;
  }
  try {
    if (!args.json) console.log(`replay-check: ${executions ? executions.map((e) => e.workflowId).join(', ') : query}\n  namespace ${namespace} at ${address}, bundle ${bundlePath}`);
    const report = await replayCheck({
      client: new Client({ connection, namespace }),
      bundlePath,
      query,
      ...(executions ? { executions } : {}),
      limit,
      concurrency,
      ...(args.json ? {} : { onResult: (r: ReplayCheckResult) => console.log(`  ${formatResult(r)}`) }),
    });
    console.log(args.json ? JSON.stringify({ ...report, exitCode: exitCodeOf(report) }, null, 2) : formatSummary(report));
    return exitCodeOf(report);
  } finally {
    await connection.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error('replay-check failed:', error);
      process.exit(3);
    },
  );
}
