import { readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadSettings } from '../config/settings';
import { WsClient, type Frame } from '../test/support/ws-client';
import { launch, type Ready } from './launcher';
import { isAlive } from './services';

/**
 * `npm run e2e:live`: the whole stack against the real model provider (OPENAI_API_KEY,
 * OPENAI_BASE_URL, KEEL_MODEL), on embedded services of its own (any free ports, a throwaway
 * data directory), through one session: a chat turn, a turn that calls the calculator, and a
 * background run. Prints each step's outcome, time and token usage; exits non-zero on a failure.
 * Pointed at the local model server it is an offline smoke test (docs/model-server.md).
 */

const { values: args } = parseArgs({ options: { verbose: { type: 'boolean', default: false } } });

/** A turn with a real model and a tool call can take a while; a run is one or more turns. */
const TURN_TIMEOUT_MS = 180_000;
const RUN_TIMEOUT_MS = 300_000;
const RUN_POLL_MS = 500;
/** Lines kept per process, printed when something fails. */
const OUTPUT_TAIL_LINES = 40;
const DATA_DIR_PREFIX = 'keel-e2e-live-';

const CHAT_PROMPT = 'Reply with one short friendly sentence that contains the word "keel".';
const TOOL_PROMPT = 'Use the calculator tool to compute 1234 * 5678, then tell me the result.';
const TOOL_RESULT = 7_006_652;
const RUN_INPUT = 'Say hello in five words or fewer.';
const FINAL_RUN_STATUSES = new Set(['done', 'error', 'cancelled']);
const INTERRUPTED = 130;

const say = (line: string) => console.log(`[e2e] ${line}`);

// ---------------------------------------------------------------------------------------------
// Process output: live with --verbose, else the last lines of each process when something fails

const tails = new Map<string, string[]>();
function keepOutput(source: string, line: string, stream: 'stdout' | 'stderr'): void {
  if (args.verbose) (stream === 'stderr' ? process.stderr : process.stdout).write(`[${source}] ${line}\n`);
  const tail = tails.get(source) ?? [];
  tail.push(line);
  if (tail.length > OUTPUT_TAIL_LINES) tail.shift();
  tails.set(source, tail);
}
function printTails(): void {
  if (args.verbose) return;
  for (const [source, lines] of tails) {
    console.log(`--- last ${lines.length} lines of ${source} ---`);
    for (const line of lines) console.log(`[${source}] ${line}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Steps and the summary

interface Usage {
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  usageMissing?: true;
}

interface StepResult {
  name: string;
  outcome: 'PASS' | 'FAIL';
  ms: number;
  detail: string;
  usage?: { inputTokens: number; outputTokens: number; costUsd: number; replies: number; withoutUsage: number };
}

const results: StepResult[] = [];
const warnings: string[] = [];
let sessionTotals: string | undefined;

async function step(name: string, run: () => Promise<Omit<StepResult, 'name' | 'outcome' | 'ms'>>): Promise<boolean> {
  const startedAt = performance.now();
  say(`${name} …`);
  let result: StepResult;
  try {
    result = { name, outcome: 'PASS', ms: 0, ...(await run()) };
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    result = { name, outcome: 'FAIL', ms: 0, detail };
  }
  result.ms = performance.now() - startedAt;
  results.push(result);
  say(`${result.outcome} ${name}: ${result.detail}`);
  return result.outcome !== 'FAIL';
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

function usageText(u: NonNullable<StepResult['usage']>): string {
  const missing = u.withoutUsage ? `, ${u.withoutUsage} of ${u.replies} replies without usage` : '';
  return `tokens ${u.inputTokens} in / ${u.outputTokens} out, $${u.costUsd.toFixed(6)}${missing}`;
}

function printSummary(model: string, code: number): void {
  const failed = results.filter((r) => r.outcome === 'FAIL').length;
  const width = Math.max(...results.map((r) => r.name.length));
  console.log('');
  console.log(`Keel live check against ${model}`);
  for (const r of results) {
    console.log(`  ${r.outcome}  ${r.name.padEnd(width)}  ${seconds(r.ms).padStart(8)}  ${r.usage ? `${usageText(r.usage)}  ` : ''}${r.detail}`);
  }
  if (sessionTotals) console.log(`  session usage: ${sessionTotals}`);
  for (const warning of warnings) console.log(`  WARNING  ${warning}`);
  const verdict = code === INTERRUPTED ? 'INTERRUPTED' : failed || code !== 0 ? `FAIL${failed ? ` (${failed} failed)` : ''}` : 'PASS';
  console.log(`result: ${verdict}`);
  console.log('');
}

// ---------------------------------------------------------------------------------------------
// Talking to the API

function client(ready: Ready) {
  const base = `http://127.0.0.1:${ready.apiPort}`;
  const token = ready.secrets.devToken ?? '';
  return {
    async request(method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
      const res = await fetch(`${base}${route}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await res.text();
      try {
        return { status: res.status, body: JSON.parse(text) };
      } catch {
        return { status: res.status, body: text };
      }
    },
    ws: (sessionId: string) => WsClient.connect(`ws://127.0.0.1:${ready.apiPort}/api/v1/sessions/${sessionId}/ws?token=${encodeURIComponent(token)}`),
  };
}

const responseText = (res: { status: number; body: any }) => `HTTP ${res.status} ${typeof res.body === 'string' ? res.body : JSON.stringify(res.body)}`.slice(0, 300);

/** Sums the usage of a turn's model replies (stream.end); a reply without usage is counted apart and warned about. */
function usageOf(ends: Frame[], where: string): NonNullable<StepResult['usage']> {
  const sum = { inputTokens: 0, outputTokens: 0, costUsd: 0, replies: ends.length, withoutUsage: 0 };
  for (const end of ends) {
    const u = end.data.usage as Usage;
    if (u.usageMissing) {
      sum.withoutUsage++;
      warnings.push(`${where}: reply ${end.data.messageId} came without usage (its tokens and cost are unknown)`);
      continue;
    }
    sum.inputTokens += u.inputTokens;
    sum.outputTokens += u.outputTokens;
    sum.costUsd += u.costUsd;
  }
  return sum;
}

/** Sends one message and returns the frames of its turn, up to and including turn.done. */
async function turn(ws: WsClient, content: string, clientMessageId: string): Promise<{ frames: Frame[]; done: Frame }> {
  const from = ws.frames.length;
  ws.send({ type: 'message', content, clientMessageId });
  const accepted = await ws.waitFor((f) => (f.type === 'message.accepted' && f.data.clientMessageId === clientMessageId) || (f.type === 'error' && f.data.clientMessageId === clientMessageId), TURN_TIMEOUT_MS);
  if (accepted.type === 'error') throw new Error(`message refused: ${accepted.data.code}: ${accepted.data.message}`);
  const done = await ws.waitFor((f) => f.type === 'turn.done' && f.data.turn === accepted.data.turn, TURN_TIMEOUT_MS);
  return { frames: ws.frames.slice(from, ws.frames.indexOf(done) + 1), done };
}

function completed(done: Frame, frames: Frame[]): string {
  if (done.data.status === 'completed') return String(done.data.content ?? '');
  const error = frames.find((f) => f.type === 'error');
  throw new Error(`turn ${done.data.status}${error ? `: ${error.data.code}: ${error.data.message}` : ''}`);
}

const quote = (text: string) => JSON.stringify(text.length > 80 ? `${text.slice(0, 77)}...` : text);

async function checks(ready: Ready, startMs: number): Promise<number> {
  results.push({ name: 'start the stack', outcome: 'PASS', ms: startMs, detail: `API on port ${ready.apiPort}` });
  const api = client(ready);
  let sessionId = '';
  let ws: WsClient | undefined;
  const sessionReady = await step('create a session', async () => {
    const res = await api.request('POST', '/api/v1/sessions', { title: 'e2e live check' });
    if (res.status !== 201) throw new Error(responseText(res));
    sessionId = res.body.id;
    ws = await api.ws(sessionId);
    return { detail: `session ${sessionId}` };
  });

  if (sessionReady && ws) {
    const socket = ws;
    await step('chat turn', async () => {
      const { frames, done } = await turn(socket, CHAT_PROMPT, 'e2e-chat');
      const reply = completed(done, frames);
      if (!reply.trim()) throw new Error('the reply is empty');
      return { detail: quote(reply), usage: usageOf(frames.filter((f) => f.type === 'stream.end'), 'chat turn') };
    });

    await step('tool call (calculator)', async () => {
      const { frames, done } = await turn(socket, TOOL_PROMPT, 'e2e-tool');
      const reply = completed(done, frames);
      const call = frames.find((f) => f.type === 'tool.call' && f.data.name === 'calculator');
      if (!call) throw new Error(`the model called no calculator (tool calls: ${frames.filter((f) => f.type === 'tool.call').map((f) => f.data.name).join(', ') || 'none'}); reply ${quote(reply)}`);
      const result = frames.find((f) => f.type === 'tool.result' && f.data.toolCallId === call.data.toolCallId);
      if (!result) throw new Error(`no tool.result for ${call.data.toolCallId}`);
      if (result.data.status !== 'succeeded') throw new Error(`calculator ${result.data.status}: ${JSON.stringify(result.data.error ?? result.data.result)}`);
      if (!JSON.stringify(result.data.result).includes(String(TOOL_RESULT))) throw new Error(`calculator answered ${JSON.stringify(result.data.result)}, not ${TOOL_RESULT}`);
      if (!reply.replace(/[\s,._'\u202f]/g, '').includes(String(TOOL_RESULT))) warnings.push(`tool call: the reply does not state ${TOOL_RESULT}: ${quote(reply)}`);
      return {
        detail: `calculator(${JSON.stringify(call.data.arguments)}) → ${JSON.stringify(result.data.result)}; reply ${quote(reply)}`,
        usage: usageOf(frames.filter((f) => f.type === 'stream.end'), 'tool call'),
      };
    });
    await socket.close().catch(() => undefined);
  }

  await step('background run', async () => {
    const created = await api.request('POST', '/api/v1/runs', { input: RUN_INPUT });
    if (created.status !== 202) throw new Error(`POST /api/v1/runs: ${responseText(created)}`);
    const { runId, sessionId: runSession } = created.body as { runId: string; sessionId: string };
    const deadline = Date.now() + RUN_TIMEOUT_MS;
    let run: { status: number; body: any };
    for (;;) {
      run = await api.request('GET', `/api/v1/runs/${runId}`);
      if (run.status !== 200) throw new Error(`GET /api/v1/runs/${runId}: ${responseText(run)}`);
      if (FINAL_RUN_STATUSES.has(run.body.status)) break;
      // No approver takes part in this check: a run waiting for one would wait for good.
      if (run.body.status === 'waiting_approval') throw new Error(`run ${runId} waits for an approval`);
      if (Date.now() > deadline) throw new Error(`run ${runId} still ${run.body.status} after ${RUN_TIMEOUT_MS / 1000} s`);
      await new Promise((r) => setTimeout(r, RUN_POLL_MS));
    }
    if (run.body.status !== 'done') throw new Error(`run ${runId} ended ${run.body.status}: ${responseText(run)}`);
    const usage = await api.request('GET', `/api/v1/sessions/${runSession}/usage`);
    const u = usage.status === 200 ? usage.body : undefined;
    if (u?.repliesWithoutUsage) warnings.push(`background run: ${u.repliesWithoutUsage} of ${u.assistantMessages} replies came without usage`);
    return {
      detail: `run ${runId} done in session ${runSession}`,
      ...(u ? { usage: { inputTokens: u.inputTokens, outputTokens: u.outputTokens, costUsd: u.costUsd, replies: u.assistantMessages, withoutUsage: u.repliesWithoutUsage ?? 0 } } : {}),
    };
  });

  if (sessionId) {
    const totals = await api.request('GET', `/api/v1/sessions/${sessionId}/usage`);
    if (totals.status === 200) {
      const t = totals.body;
      sessionTotals = `tokens ${t.inputTokens} in / ${t.outputTokens} out, $${Number(t.costUsd).toFixed(6)} over ${t.assistantMessages} replies, ${t.repliesWithoutUsage ?? 0} without usage`;
    }
  }
  return results.some((r) => r.outcome === 'FAIL') ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------

/** Data directories of earlier runs that were killed before they could remove their own. */
async function removeAbandonedDataDirs(): Promise<void> {
  for (const entry of await readdir(os.tmpdir()).catch(() => [] as string[])) {
    const pid = Number(entry.slice(DATA_DIR_PREFIX.length));
    if (entry.startsWith(DATA_DIR_PREFIX) && Number.isInteger(pid) && !isAlive(pid)) await rm(path.join(os.tmpdir(), entry), { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  let settings;
  try {
    settings = loadSettings();
  } catch (error) {
    say(error instanceof Error ? error.message : String(error));
    process.exit(1);
  }
  if (!settings.llm.apiKey) {
    console.log('e2e:live skipped: set OPENAI_API_KEY (and OPENAI_BASE_URL for a non-OpenAI provider)');
    return;
  }
  await removeAbandonedDataDirs();
  let model = `${settings.llm.model} via ${settings.llm.baseUrl ?? 'api.openai.com'}`;
  const startedAt = performance.now();
  launch(
    {
      // Embedded services of its own whatever is configured, and every port picked free, so it
      // runs beside `npm start` and the tests.
      env: {
        ...process.env,
        TEMPORAL_ADDRESS: '',
        DATABASE_URL: '',
        KEEL_DATA_DIR: path.join(os.tmpdir(), `${DATA_DIR_PREFIX}${process.pid}`),
        KEEL_API_HOST: '127.0.0.1',
        KEEL_API_PORT: '0',
        KEEL_WORKER_METRICS_PORT: '0',
        KEEL_TASK_QUEUE: 'keel-e2e-live',
        // Nothing here is worth waiting for on the way out: replies in flight are not kept.
        KEEL_WORKER_SHUTDOWN_GRACE_MS: '1000',
        KEEL_API_DRAIN_MS: '1000',
      },
      layout: { ports: { temporal: 0, temporalUi: null, postgres: 0 }, persistent: false },
      log: say,
      output: keepOutput,
      // Ctrl-C is not a pass.
      signalExitCode: INTERRUPTED,
      afterStop: (code) => {
        if (code !== 0) printTails();
        printSummary(model, code);
      },
    },
    (ready) => {
      model = ready.model;
      return checks(ready, performance.now() - startedAt);
    },
  );
}

main().catch((error: unknown) => {
  say(`failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
