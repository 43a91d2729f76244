import { modelToolName, toolNameReader } from '../activities/llm/tool-names';
import type OpenAI from 'openai';
import type { DatabasePool } from 'slonik';
import { systemPromptOf, type HealthCheckProbe, type ResolvedAgent } from '../contracts/agents';
import type { ProbeResult } from '../contracts/releases';
import type { Tool, ToolSettings } from '../tools';

export interface ProbeDeps {
  openai: OpenAI;
  pool: DatabasePool;
  tools: Readonly<Record<string, Tool>>;
  toolSettings: ToolSettings;
  /** The deployment's model, for agents that name none. */
  defaultModel: string;
  /** Bounds each probe, whatever its own `withinMs`. */
  timeoutMs: number;
}

/** What a write or approval-needing tool answers inside a probe: a probe never acts. */
const NOT_EXECUTED = 'Not executed: this is a health-check probe.';
const REPLY_EXCERPT_CHARS = 200;
/** The `user` of a probe's model requests, so a provider's logs (and the offline model's scripts) can tell them apart. */
export const PROBE_USER = 'keel-health-probe';

/**
 * Runs one synthetic turn against an agent version, outside any session: the version's system
 * prompt, model and tools, up to its step limit. Read tools that need no approval really run
 * (their answers shape the reply the probe checks); any other tool call is answered "not
 * executed", so a probe never writes. Then checks the probe's expectations.
 */
export async function runProbe(deps: ProbeDeps, agent: ResolvedAgent, probe: HealthCheckProbe, signal?: AbortSignal): Promise<ProbeResult> {
  const startedAt = performance.now();
  const deadline = AbortSignal.timeout(Math.min(deps.timeoutMs, probe.expect.withinMs ?? deps.timeoutMs));
  const abort = signal ? AbortSignal.any([signal, deadline]) : deadline;
  const toolsCalled: string[] = [];
  const failures: string[] = [];
  let reply = '';
  const messages: OpenAI.ChatCompletionMessageParam[] = [
    ...(agent.systemPrompt ? [{ role: 'system' as const, content: systemPromptOf(agent) }] : []),
    { role: 'user', content: probe.prompt },
  ];
  const toolSpecs = agent.tools.map(({ name, description, parameters }) => ({ type: 'function' as const, function: { name: modelToolName(name), description, parameters } }));
  const keelName = toolNameReader(agent.tools.map((t) => t.name));
  try {
    for (let step = 1; step <= agent.maxStepsPerTurn; step++) {
      const completion = await deps.openai.chat.completions.create(
        {
          model: agent.model.name ?? deps.defaultModel,
          messages,
          user: PROBE_USER,
          ...(agent.model.temperature === undefined ? {} : { temperature: agent.model.temperature }),
          ...(toolSpecs.length ? { tools: toolSpecs } : {}),
        },
        { signal: abort },
      );
      const message = completion.choices[0]?.message;
      const calls = (message?.tool_calls ?? []).filter((c) => c.type === 'function');
      if (calls.length === 0) {
        reply = message?.content ?? '';
        break;
      }
      messages.push({ role: 'assistant', content: message?.content ?? null, tool_calls: calls });
      for (const call of calls) {
        const name = keelName(call.function.name);
        toolsCalled.push(name);
        messages.push({ role: 'tool', tool_call_id: call.id, content: await answerToolCall(deps, agent, name, call.function.arguments, abort) });
      }
      if (step === agent.maxStepsPerTurn) failures.push(`no final reply within ${agent.maxStepsPerTurn} steps`);
    }
  } catch (error) {
    failures.push(deadline.aborted ? `did not finish within ${Math.min(deps.timeoutMs, probe.expect.withinMs ?? deps.timeoutMs)} ms` : `model call failed: ${describe(error)}`);
  }
  const durationMs = Math.round(performance.now() - startedAt);
  const { replyMatches, toolCalled, withinMs } = probe.expect;
  if (failures.length === 0) {
    if (replyMatches !== undefined && !new RegExp(replyMatches, 'i').test(reply)) failures.push(`reply does not match /${replyMatches}/i`);
    if (toolCalled !== undefined && !toolsCalled.includes(toolCalled)) failures.push(`did not call ${toolCalled}`);
    if (withinMs !== undefined && durationMs > withinMs) failures.push(`took ${durationMs} ms (limit ${withinMs} ms)`);
  }
  return { name: probe.name, passed: failures.length === 0, durationMs, toolsCalled, reply: reply.slice(0, REPLY_EXCERPT_CHARS), failures };
}

async function answerToolCall(deps: ProbeDeps, agent: ResolvedAgent, name: string, args: string, signal: AbortSignal): Promise<string> {
  const policy = agent.tools.find((t) => t.name === name);
  const tool = deps.tools[name];
  if (!policy || !tool) return `No tool named '${name}' is available to this agent.`;
  if (policy.permission !== 'read' || policy.requiresApproval) return NOT_EXECUTED;
  try {
    const parsed = tool.parse(JSON.parse(args || '{}'));
    const result = await tool.execute(parsed, { sessionId: 'health-probe', toolCallId: 'probe', idempotencyKey: `probe:${name}`, pool: deps.pool, signal, settings: deps.toolSettings });
    return JSON.stringify(result);
  } catch (error) {
    return `The tool failed: ${describe(error)}`;
  }
}

function describe(error: unknown): string {
  const e = error as { status?: number; message?: string };
  return `${e.status ? `${e.status} ` : ''}${e.message ?? String(error)}`.slice(0, 300);
}
