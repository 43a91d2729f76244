/**
 * The shapes the console reads from the API. The zod schemas in contracts/ are the source of
 * truth (docs/protocol.md); these are the client's view of the fields it uses, kept apart
 * because the contracts modules import Node built-ins a browser bundle cannot take.
 */

export interface ErrorBody {
  code: string;
  message: string;
  recoverable?: boolean;
  requestId?: string;
  details?: unknown;
}

export interface Session {
  id: string;
  title: string | null;
  agentId: string;
  agentVersion?: number | null;
  ownerId?: string;
  status: 'active' | 'expired' | 'deleted' | string;
  createdAt: string;
  updatedAt: string;
  endedAt: string | null;
  lastActivityAt?: string;
  pendingApprovals?: number;
  lastSeq?: number;
}

export interface SessionPage {
  sessions: Session[];
  nextCursor: string | null;
}

export interface AgentTool {
  name: string;
  description?: string;
  permission?: string;
  requiresApproval?: boolean;
}

export interface Release {
  activeVersion: number;
  canaryVersion: number | null;
  canaryPercent: number | null;
  activatedAt: string;
  updatedAt: string;
}

export interface Agent {
  id: string;
  version: number;
  name: string;
  description?: string | null;
  busyPolicy?: string;
  approvalTtlMs?: number;
  release?: Release;
  tools: AgentTool[];
}

export interface AgentVersion {
  version: number;
  digest: string;
  status: 'published' | 'active' | 'canary' | 'retired' | 'rolled_back' | string;
  publishedBy: string | null;
  createdAt: string;
}

export interface AgentVersions {
  agentId: string;
  release: Release | null;
  versions: AgentVersion[];
}

export interface PendingApproval {
  toolCallId: string;
  sessionId: string;
  name: string;
  arguments: unknown;
  digest: string;
  turn: number;
  requestedAt: string;
  expiresAt: string | null;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
  costUsd: number;
  usageMissing?: true;
}

export interface ConversationRecord {
  id: string;
  ownerId: string | null;
  agentId: string | null;
  status: string;
  resolution: 'open' | 'resolved' | 'escalated' | 'abandoned';
  createdAt: string;
  endedAt: string | null;
  lastActivityAt: string | null;
  agentsUsed: string[];
  turns: number;
  userMessages: number;
  replies: number;
  toolCalls: number;
  approvals: number;
  firstResponseMs: number | null;
  totalMs: number | null;
  usage: { inputTokens: number; outputTokens: number; costUsd: number; repliesWithoutUsage: number };
}

export interface ReplayStep {
  seq: number;
  at: string;
  type: string;
  turn: number | null;
  durationMs: number | null;
  attempts?: number;
  error?: ErrorBody | null;
  data: Record<string, unknown>;
}

export interface ReplayPage {
  conversation: ConversationRecord;
  steps: ReplayStep[];
  nextCursor: string | null;
}

export interface AnalyticsReport {
  range: string;
  from: string;
  to: string;
  scope: 'all' | 'own';
  conversations: {
    total: number;
    open: number;
    resolved: number;
    escalated: number;
    abandoned: number;
    resolutionRate: number | null;
    escalationRate: number | null;
    averageTurns: number | null;
    averageCostUsd: number | null;
  };
  tokens: { input: number; output: number };
  costUsd: number;
  agents: { agent: string; conversations: number; turns: number }[];
  toolCalls: { tool: string; status: string; calls: number }[];
  approvals: { requested: number; approved: number; rejected: number; expired: number; cancelled: number; pending: number; medianDecisionMs: number | null };
  ttft: { replies: number; p95Ms: number | null };
}

export interface Objective {
  target: number;
  value: number | null;
  met: boolean | null;
}

export interface SloReport {
  window: string;
  scope: 'all' | 'own';
  runs: { total: number; overdue: number; platformFailures: number };
  successRate: number | null;
  availability: number | null;
  objectives: { timeToExecuteP95: Objective; timeToExecuteP99: Objective; successRate: Objective; availability: Objective };
}

export interface Incident {
  id: string | number;
  kind: string;
  severity: string;
  summary: string;
  agentId: string | null;
  version: number | null;
  detectedAt: string | null;
  rolledBackAt: string | null;
}

export interface OpenApiImport {
  id: string;
  status: string;
  agentId: string;
  sourceUrl: string | null;
  title: string | null;
  error: { code: string; message: string } | null;
  createdAt: string | null;
}

export interface Classification {
  operationId: string;
  method: string;
  path: string;
  summary: string | null;
  access: 'read' | 'write';
  requiresApproval: boolean;
  enabled: boolean;
  edited: boolean;
}

/** A frame of a session's WebSocket (or of the per-user socket, which adds `sessionId` to each). */
export interface ServerFrame {
  type: string;
  sessionId?: string;
  seq?: number;
  lastSeq?: number;
  data: Record<string, unknown>;
}
