import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { z, type ZodIssue } from 'zod';
import { AgentDefinition, RouterDefinition, routerAsAgent } from '../contracts/agents';
import { mcpToolAllowed, McpServers, splitMcpToolName, type McpServerConfig } from '../contracts/mcp';

/** The repository's agent definitions. */
export const DEFAULT_AGENTS_FILE = path.join(__dirname, 'agents.yaml');

const AgentFile = z
  .object({
    agents: z.array(AgentDefinition).min(1, 'must list at least one agent'),
    routers: z.array(RouterDefinition).optional(),
    /** Where `<server>.<tool>` tools come from (docs/tools.md, "MCP servers"). */
    mcpServers: McpServers.optional(),
  })
  .strict()
  .superRefine((file, ctx) => {
    const servers = new Map((file.mcpServers ?? []).map((s) => [s.name, s]));
    file.agents.forEach((agent, i) =>
      agent.tools.forEach((name, j) => {
        const split = splitMcpToolName(name);
        const server = split && servers.get(split.server);
        if (split && server && !mcpToolAllowed(server, split.tool)) {
          ctx.addIssue({ code: 'custom', path: ['agents', i, 'tools', j], message: `"${split.tool}" is not in the allow list of MCP server "${server.name}"` });
        }
      }),
    );
    const ids = file.agents.map((a) => a.id);
    ids.forEach((id, i) => {
      const first = ids.indexOf(id);
      if (first !== i) ctx.addIssue({ code: 'custom', path: ['agents', i, 'id'], message: `duplicate agent id "${id}" (first at agents[${first}])` });
    });
    const routerIds = (file.routers ?? []).map((r) => r.id);
    (file.routers ?? []).forEach((router, i) => {
      // Agents and routers share one namespace: a session names either.
      if (ids.includes(router.id)) ctx.addIssue({ code: 'custom', path: ['routers', i, 'id'], message: `"${router.id}" is already an agent's id` });
      const first = routerIds.indexOf(router.id);
      if (first !== i) ctx.addIssue({ code: 'custom', path: ['routers', i, 'id'], message: `duplicate router id "${router.id}" (first at routers[${first}])` });
      router.agents.forEach((member, j) => {
        if (!ids.includes(member)) ctx.addIssue({ code: 'custom', path: ['routers', i, 'agents', j], message: `"${member}" is not an agent in this file` });
      });
    });
  });

type FieldPath = (string | number)[];

export interface AgentConfigProblem {
  /** Dotted path of the offending field, e.g. `agents[1].busyPolicy`; `(syntax)` for YAML syntax errors. */
  field: string;
  /** The id of the agent the field belongs to, when it has one. */
  agent?: string;
  line?: number;
  message: string;
}

/** A definitions file that cannot be used; names the file, the field and, when known, the line. */
export class AgentConfigError extends Error {
  override name = 'AgentConfigError';
  /** Relative to the working directory when inside it. */
  readonly file: string;
  readonly field: string;
  readonly line?: number;

  constructor(
    file: string,
    readonly problems: [AgentConfigProblem, ...AgentConfigProblem[]],
  ) {
    const shown = displayPath(file);
    super(problems.map((p) => `${shown}: ${p.agent === undefined ? '' : `agent "${p.agent}": `}${p.field}${p.line === undefined ? '' : ` (line ${p.line})`}: ${p.message}`).join('\n'));
    this.file = shown;
    this.field = problems[0].field;
    if (problems[0].line !== undefined) this.line = problems[0].line;
  }
}

export async function loadAgentFile(file: string): Promise<AgentDefinition[]> {
  return parseAgentFile(await readFile(file, 'utf8'), file);
}

/** Parses and validates the text of a definitions file; `file` only names it in errors. */
export function parseAgentFile(text: string, file: string): AgentDefinition[] {
  const parsed = parseWith(AgentFile, text, file);
  return [...parsed.agents, ...(parsed.routers ?? []).map(routerAsAgent)];
}

/**
 * Only the file's `mcpServers:` (what a worker needs to discover and call MCP tools, without
 * holding the agents: the API validates those). None when the file has no such section.
 */
export async function loadMcpServers(file: string): Promise<McpServerConfig[]> {
  return parseWith(McpSection, await readFile(file, 'utf8'), file).mcpServers ?? [];
}

const McpSection = z.object({ mcpServers: McpServers.optional() }).passthrough();

function parseWith<S extends z.ZodTypeAny>(schema: S, text: string, file: string): z.output<S> {
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, prettyErrors: false });
  const syntaxErrors = doc.errors.map((e) => ({ field: '(syntax)', line: counter.linePos(e.pos[0]).line, message: e.message }));
  if (isNonEmpty(syntaxErrors)) throw new AgentConfigError(file, syntaxErrors);

  const raw = doc.toJS() as unknown;
  const parsed = schema.safeParse(raw);
  if (parsed.success) return parsed.data as z.output<S>;
  const problems = parsed.error.issues.flatMap(splitIssue).map(({ path: at, message }) => {
    const line = lineOf(doc, counter, at);
    const agent = agentIdAt(raw, at);
    return { field: fieldOf(at), message, ...(agent === undefined ? {} : { agent }), ...(line === undefined ? {} : { line }) };
  });
  throw new AgentConfigError(file, isNonEmpty(problems) ? problems : [{ field: '(root)', message: parsed.error.message }]);
}

/** The id written for the agent a problem's path is in (`agents[i]…`), when it is a string. */
function agentIdAt(raw: unknown, at: FieldPath): string | undefined {
  if ((at[0] !== 'agents' && at[0] !== 'routers') || typeof at[1] !== 'number') return undefined;
  const agents = (raw as Record<string, unknown> | null)?.[at[0]];
  const id = Array.isArray(agents) ? (agents[at[1]] as { id?: unknown } | undefined)?.id : undefined;
  return typeof id === 'string' ? id : undefined;
}

function isNonEmpty<T>(items: T[]): items is [T, ...T[]] {
  return items.length > 0;
}

function displayPath(file: string): string {
  const relative = path.relative(process.cwd(), path.resolve(file));
  return relative.startsWith('..') || path.isAbsolute(relative) ? file : relative;
}

/** One problem per unknown key, so each names its own field and line. */
function splitIssue(issue: ZodIssue): { path: FieldPath; message: string }[] {
  if (issue.code === 'unrecognized_keys') return issue.keys.map((key) => ({ path: [...issue.path, key], message: 'unknown key' }));
  return [{ path: issue.path, message: describeIssue(issue) }];
}

function describeIssue(issue: ZodIssue): string {
  switch (issue.code) {
    case 'invalid_enum_value':
      return `expected one of ${issue.options.join(', ')}`;
    case 'invalid_type':
      return issue.received === 'undefined' ? 'required' : `expected ${issue.expected}, got ${issue.received}`;
    case 'too_small':
      if (issue.type === 'number') return `must be ${issue.inclusive ? 'at least' : 'greater than'} ${issue.minimum}`;
      if (issue.type === 'string' && issue.minimum === 1) return 'must not be empty';
      return issue.message;
    case 'too_big':
      if (issue.type === 'number') return `must be ${issue.inclusive ? 'at most' : 'less than'} ${issue.maximum}`;
      return issue.message;
    default:
      return issue.message;
  }
}

function fieldOf(at: FieldPath): string {
  const text = at
    .map((segment, i) => {
      if (typeof segment === 'number') return `[${segment}]`;
      if (/^[A-Za-z_][\w-]*$/.test(segment)) return i === 0 ? segment : `.${segment}`;
      return `[${JSON.stringify(segment)}]`;
    })
    .join('');
  return text || '(root)';
}

/**
 * The line of the deepest node on the path that exists: the key for a map entry (so a missing
 * field points at the object that lacks it), the item for a list entry.
 */
function lineOf(doc: Document, counter: LineCounter, at: FieldPath): number | undefined {
  let node: unknown = doc.contents;
  let deepest: Node | undefined = isNode(node) ? node : undefined;
  for (const segment of at) {
    if (isMap(node)) {
      const pair = node.items.find((p) => String(isScalar(p.key) ? p.key.value : p.key) === String(segment));
      if (!pair) break;
      if (isNode(pair.key)) deepest = pair.key;
      node = pair.value;
    } else if (isSeq(node) && typeof segment === 'number') {
      node = node.items[segment];
      if (!isNode(node)) break;
      deepest = node;
    } else {
      break;
    }
  }
  const offset = deepest?.range?.[0];
  return offset === undefined ? undefined : counter.linePos(offset).line;
}
