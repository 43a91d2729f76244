import { parseJsonText } from '../../contracts/json-text';
import { OperationClassification, type OperationSummary, type ParsedOperation } from '../../contracts/openapi';

/**
 * Classifying an operation: what the model is told, how its answer is checked, and the
 * deterministic fallback when it fails or answers something unusable (GET and HEAD read,
 * anything else write and needs approval).
 */

export const CLASSIFIER_PROMPT = [
  'You review one operation of an HTTP API that an AI support agent may call as a tool.',
  'Answer with:',
  '- access: "read" when calling it changes nothing, "write" when it creates, changes, deletes or sends something;',
  '- needsApproval: true when a person should approve each call before it runs (anything that moves money, deletes data, or cannot be undone);',
  '- agentGroup: one short lower-case word for the kind of agent that should have this tool (e.g. "orders", "billing", "accounts");',
  '- customerParameters: the names of the parameters whose values the customer gives (an order number, an e-mail address), not the agent or the system.',
  'The operation follows as JSON.',
].join('\n');

export function operationSummary(op: ParsedOperation): OperationSummary {
  return {
    operationId: op.operationId,
    method: op.method,
    path: op.path,
    summary: op.summary,
    description: op.description,
    tags: op.tags,
    parameters: op.parameters.map((p) => ({ name: p.name, in: p.in, required: p.required, description: op.parameterDescriptions[p.name] ?? null })),
    hasBody: op.body !== undefined,
  };
}

/** `Orders API` → `orders_api`: lower-case letters, digits and `_`. */
export function snakeCase(text: string): string {
  return text
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9]+/g, '_')
    .replace(/^_+|_+$/g, '')
    .toLowerCase();
}

const GROUP_MAX = 64;

/** The operation's first tag, else the first plain segment of its path, else `general`. */
export function defaultAgentGroup(op: Pick<ParsedOperation, 'tags' | 'path'>): string {
  const fromTag = op.tags[0] ? snakeCase(op.tags[0]) : '';
  if (fromTag) return fromTag.slice(0, GROUP_MAX);
  const segment = op.path.split('/').find((s) => s !== '' && !s.startsWith('{') && !/^v\d+$/i.test(s));
  return (segment ? snakeCase(segment) : '').slice(0, GROUP_MAX) || 'general';
}

export function fallbackClassification(op: ParsedOperation): OperationClassification {
  const read = op.method === 'GET' || op.method === 'HEAD';
  return {
    access: read ? 'read' : 'write',
    needsApproval: !read,
    agentGroup: defaultAgentGroup(op),
    customerParameters: op.parameters.filter((p) => p.in === 'path').map((p) => p.name),
  };
}

/**
 * The model's answer when it is one: valid JSON of the schema, naming only the operation's own
 * parameters (and `body`). Its group is made a plain word. Anything else is null (the fallback).
 */
export function acceptedClassification(content: string | null | undefined, op: ParsedOperation): OperationClassification | null {
  const answer = parseJsonText(OperationClassification, content);
  if (!answer) return null;
  const names = new Set([...op.parameters.map((p) => p.name), ...(op.body ? ['body'] : [])]);
  if (answer.customerParameters.some((name) => !names.has(name))) return null;
  const agentGroup = snakeCase(answer.agentGroup).slice(0, GROUP_MAX);
  if (!agentGroup) return null;
  // The spec's text is not trusted to turn a method that changes things into a read: only an operator's edit may.
  const access = op.method === 'GET' || op.method === 'HEAD' ? answer.access : 'write';
  return { ...answer, access, agentGroup, customerParameters: [...new Set(answer.customerParameters)] };
}

/** The tool's default approval: a write always needs one (until an operator edits it), a read when the model says so. */
export function requiresApprovalOf(c: OperationClassification): boolean {
  return c.access === 'write' || c.needsApproval;
}

/** Whether sending a call twice with one Idempotency-Key has one effect, by HTTP's own rules (editable). */
export function defaultIdempotent(method: string): boolean {
  return method !== 'POST' && method !== 'PATCH';
}
