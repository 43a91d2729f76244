import { textOf, type ChatRequest, type ConversationProblem } from './reply';

/**
 * Misbehaviour on request, so a bad agent release can be staged offline: a marker
 * `[keel-misbehave: <mode>]` in a system (or developer) message, or the model name
 * `keel-misbehave-<mode>`, makes every request that carries it misbehave. Markers combine
 * (several markers, or `[keel-misbehave: slow-2000, no-usage]`), and the same request always
 * misbehaves the same way. See docs/model-server.md, which also says how scripts win over it.
 */
export interface Misbehaviour {
  /** HTTP 500 with an OpenAI-shaped error body. */
  error: boolean;
  /** The first token (or a whole non-streamed answer) is held back this long. */
  slowMs?: number;
  /** A fixed wrong answer, never a tool call. */
  wrong: boolean;
  /** No usage: no usage chunk in a stream, no `usage` in a plain answer. */
  noUsage: boolean;
}

export const MISBEHAVE_MODEL_PREFIX = 'keel-misbehave-';
export const WRONG_REPLY = 'I cannot help with that.';
/** The longest `slow-<ms>` (one hour): longer is refused, as Node's timers cannot wait over 2^31 ms anyway. */
export const MAX_SLOW_MS = 3_600_000;

const MARKER = /\[keel-misbehave:([^\]]*)\]/gi;
const MODES = ['error', 'slow-<ms>', 'wrong', 'no-usage'];

type Mode = { error: true } | { slowMs: number } | { wrong: true } | { noUsage: true };

function modeOf(name: string): Mode | string {
  if (name === 'error') return { error: true };
  if (name === 'wrong') return { wrong: true };
  if (name === 'no-usage') return { noUsage: true };
  const slow = /^slow-(\d+)$/.exec(name);
  if (!slow) return `Unknown keel-misbehave mode '${name}': expected one of ${MODES.join(', ')}.`;
  const ms = Number(slow[1]);
  return ms <= MAX_SLOW_MS ? { slowMs: ms } : `keel-misbehave mode '${name}' waits longer than ${MAX_SLOW_MS} ms.`;
}

/** The modes a request asks for with its model name and system messages; a problem when one is not a mode. */
export function misbehaviourOf(request: ChatRequest): { misbehaviour: Misbehaviour } | { problem: ConversationProblem } {
  const asked: { name: string; param: string }[] = [];
  if (request.model.startsWith(MISBEHAVE_MODEL_PREFIX)) asked.push({ name: request.model.slice(MISBEHAVE_MODEL_PREFIX.length), param: 'model' });
  for (const [index, message] of request.messages.entries()) {
    if (message.role !== 'system' && message.role !== 'developer') continue;
    for (const marker of textOf(message.content).matchAll(MARKER)) {
      for (const name of (marker[1] ?? '').split(',')) asked.push({ name: name.trim().toLowerCase(), param: `messages.[${index}].content` });
    }
  }
  const misbehaviour: Misbehaviour = { error: false, wrong: false, noUsage: false };
  for (const { name, param } of asked) {
    const mode = modeOf(name);
    if (typeof mode === 'string') return { problem: { message: mode, param } };
    // Two slow markers: the longer wait, whatever their order.
    if ('slowMs' in mode) misbehaviour.slowMs = Math.max(misbehaviour.slowMs ?? 0, mode.slowMs);
    else Object.assign(misbehaviour, mode);
  }
  return { misbehaviour };
}
