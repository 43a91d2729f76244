import { createHash, randomUUID } from 'node:crypto';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import type { DatabasePool } from 'slonik';
import { KeelError } from '../contracts/errors';
import { sessionWorkflowId } from '../contracts/ids';
import { AgentIdKey, SessionStatusKey } from '../contracts/search-attributes';
import { sessionStateQuery, userMessageSignal, type SessionStateView } from '../contracts/session';
import { temporalAddressOf, type Settings } from '../config/settings';
import { deleteSessionRow, findSession, insertSession, type SessionRow } from '../db/sessions';
import type { sessionWorkflow } from '../workflows';

export const DEFAULT_AGENT_ID = 'default';

/** A message ID derived from the client's ID, so a repeated send names the same message. */
export function messageIdFor(sessionId: string, clientMessageId?: string): string {
  if (!clientMessageId) return `m_${randomUUID().replace(/-/g, '')}`;
  return `m_${createHash('sha256').update(`${sessionId}\0${clientMessageId}`).digest('hex').slice(0, 32)}`;
}

/** Session operations shared by REST, WebSocket and SSE: the one place that talks to Temporal. */
export class SessionService {
  private constructor(
    private readonly client: Client,
    private readonly connection: Connection,
    private readonly pool: DatabasePool,
    private readonly settings: Settings,
  ) {}

  static async connect(settings: Settings, pool: DatabasePool): Promise<SessionService> {
    const connection = await Connection.connect({ address: temporalAddressOf(settings) });
    const client = new Client({ connection, namespace: settings.temporal.namespace });
    return new SessionService(client, connection, pool, settings);
  }

  async create(input: { title?: string; agentId?: string }): Promise<SessionRow> {
    const id = randomUUID();
    const agentId = input.agentId ?? DEFAULT_AGENT_ID;
    const row = await insertSession(this.pool, { id, title: input.title ?? null, agentId });
    try {
      await this.client.workflow.start<typeof sessionWorkflow>('sessionWorkflow', {
        taskQueue: this.settings.temporal.taskQueue,
        workflowId: sessionWorkflowId(id),
        args: [{ sessionId: id, config: this.settings.session }],
        typedSearchAttributes: [
          { key: SessionStatusKey, value: 'active' },
          { key: AgentIdKey, value: agentId },
        ],
        memo: { title: input.title ?? '' },
      });
    } catch (error) {
      await deleteSessionRow(this.pool, id).catch(() => undefined);
      throw new KeelError('SERVICE_UNAVAILABLE', 'Could not start the session', undefined, { cause: error });
    }
    return row;
  }

  /** The session row, or SESSION_NOT_FOUND. */
  async require(sessionId: string): Promise<SessionRow> {
    const row = await findSession(this.pool, sessionId);
    if (!row || row.status === 'deleted') throw new KeelError('SESSION_NOT_FOUND', 'No such session');
    return row;
  }

  async sendMessage(sessionId: string, content: string, clientMessageId?: string): Promise<{ messageId: string }> {
    const row = await this.require(sessionId);
    if (row.status === 'expired') throw expired();
    const messageId = messageIdFor(sessionId, clientMessageId);
    try {
      await this.client.workflow
        .getHandle(sessionWorkflowId(sessionId))
        .signal(userMessageSignal, { messageId, content, ...(clientMessageId ? { clientMessageId } : {}) });
    } catch (error) {
      throw await this.mapTemporalError(sessionId, error);
    }
    return { messageId };
  }

  async state(sessionId: string): Promise<SessionStateView | null> {
    try {
      return await this.client.workflow.getHandle(sessionWorkflowId(sessionId)).query(sessionStateQuery);
    } catch {
      return null;
    }
  }

  private async mapTemporalError(sessionId: string, error: unknown): Promise<KeelError> {
    if (error instanceof WorkflowNotFoundError) {
      const row = await findSession(this.pool, sessionId);
      if (row?.status === 'expired') return expired();
      return new KeelError('SESSION_NOT_FOUND', 'No such session', undefined, { cause: error });
    }
    return new KeelError('SERVICE_UNAVAILABLE', 'The session service is unavailable', undefined, { cause: error });
  }

  async checkTemporal(): Promise<boolean> {
    try {
      await this.connection.workflowService.getSystemInfo({});
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    await this.connection.close();
  }
}

function expired(): KeelError {
  return new KeelError('SESSION_EXPIRED', 'Session expired. Please start a new conversation.');
}
