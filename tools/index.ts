import type { ToolDefinition } from '../contracts/tools';
import { calculator } from './calculator';
import { createNote } from './create-note';
import { currentTime } from './current-time';
import { demoTools } from './demo';
import { HTTP_TIMEOUT_MARGIN_MS, httpRequest } from './http-request';
import type { Tool, ToolSettings } from './tool';
import { ToolCatalog } from './catalog';
import type { CommonQueryMethods } from 'slonik';

export type { Tool, ToolContext, ToolSettings } from './tool';
export { DEFAULT_TOOL_SETTINGS, ToolAuthError, ToolInputError, ToolRefusedError, ToolTimeoutError, ToolTransientError, ToolValidationError } from './tool';
export { classifyHttpStatus, throwForHttpStatus, type HttpStatusClass } from './http-failures';

/**
 * Every built-in tool by name. The object has no prototype, so a model asking for a tool named
 * "toString" or "__proto__" finds nothing instead of an Object method.
 */
export const builtinTools: Readonly<Record<string, Tool>> = Object.freeze(
  Object.assign(Object.create(null) as Record<string, Tool>, {
    [calculator.definition.name]: calculator,
    [currentTime.definition.name]: currentTime,
    [httpRequest.definition.name]: httpRequest,
    [createNote.definition.name]: createNote,
    // The agent templates' tools (agents/templates/); only agents that list them see them.
    ...Object.fromEntries(demoTools.map((tool) => [tool.definition.name, tool])),
  }),
);

/**
 * Every built-in tool's definition as this deployment runs it: http_request's time-out follows
 * KEEL_HTTP_TIMEOUT_MS (plus a margin, so the request's own, clearer time-out ends it first).
 * Agents are resolved against these, so the session's tool policy carries the real limit.
 */
export function toolDefinitions(settings: ToolSettings): Record<string, ToolDefinition> {
  const defs: Record<string, ToolDefinition> = Object.create(null) as Record<string, ToolDefinition>;
  for (const [name, tool] of Object.entries(builtinTools)) defs[name] = tool.definition;
  const http = defs[httpRequest.definition.name]!;
  defs[http.name] = { ...http, timeoutMs: Math.max(http.timeoutMs, settings.httpTimeoutMs + HTTP_TIMEOUT_MARGIN_MS) };
  return defs;
}

/** This process's tools: the built-in ones and, loaded on demand, the catalog's (MCP, OpenAPI). */
export function createToolCatalog(db: CommonQueryMethods, settings: ToolSettings): ToolCatalog {
  return new ToolCatalog(db, builtinTools, toolDefinitions(settings));
}
export { ToolCatalog, upsertCatalogTool } from './catalog';
