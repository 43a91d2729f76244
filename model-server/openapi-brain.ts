import { CLASSIFY_FORMAT_NAME, type OperationClassification, type OperationSummary } from '../contracts/openapi';
import type { ChatMessage, ChatRequest, Reply } from './reply';

/**
 * The local model's answer to an OpenAPI import's classifier (structured output named
 * `openapi_operation`, activities/openapi-import.ts): read for GET and HEAD, write (with
 * approval) for anything else, the operation's first tag (else the first word of its path) as
 * its agent group, and its required path and query parameters as the customer's. Deterministic,
 * so tests can tell its answer from Keel's own fallback (which names path parameters only).
 */

export function isOpenapiClassifyRequest(request: ChatRequest): boolean {
  const format = (request as { response_format?: { type?: unknown; json_schema?: { name?: unknown } } }).response_format;
  return format?.type === 'json_schema' && format.json_schema?.name === CLASSIFY_FORMAT_NAME;
}

function textOf(content: ChatMessage['content']): string {
  if (typeof content === 'string') return content;
  return (content ?? []).map((part) => part.text ?? '').join('');
}

function word(text: string): string {
  return text
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9]+/g, '_')
    .replace(/^_+|_+$/g, '')
    .toLowerCase();
}

export function openapiClassifyReply(request: ChatRequest): Reply {
  const last = [...request.messages].reverse().find((m) => m.role === 'user');
  let op: Partial<OperationSummary> = {};
  try {
    op = JSON.parse(last ? textOf(last.content) : '{}') as Partial<OperationSummary>;
  } catch {
    op = {};
  }
  const method = String(op.method ?? 'POST').toUpperCase();
  const read = method === 'GET' || method === 'HEAD';
  const segment = String(op.path ?? '').split('/').find((s) => s !== '' && !s.startsWith('{') && !/^v\d+$/i.test(s));
  const answer: OperationClassification = {
    access: read ? 'read' : 'write',
    needsApproval: !read,
    agentGroup: word(op.tags?.[0] ?? segment ?? '') || 'general',
    customerParameters: (op.parameters ?? []).filter((p) => p.required && (p.in === 'path' || p.in === 'query')).map((p) => p.name),
  };
  return { kind: 'text', text: JSON.stringify(answer) };
}
