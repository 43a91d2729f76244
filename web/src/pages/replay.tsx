import { useEffect, useState } from 'react';
import { api, ApiError, query } from '../api/client';
import type { ConversationRecord, ReplayPage, ReplayStep } from '../api/types';
import { Empty, ErrorState, Loading } from '../components/states';
import { duration, formatTime, json, usd } from '../format';
import { href } from '../router';
import { useLoad } from '../use-load';

const PAGE = 20;
const STEPS_PAGE = 100;

/** Conversations (newest first) and the step timeline of one (docs/replay-analytics.md). */
export function ReplayPageView({ conversationId }: { conversationId: string | null }) {
  return <main className="page" id="main">{conversationId ? <Timeline id={conversationId} /> : <ConversationList />}</main>;
}

function ConversationList() {
  const first = useLoad((signal) => api<{ conversations: ConversationRecord[]; nextCursor: string | null }>(`/api/v1/conversations${query({ limit: PAGE })}`, { signal }), 'conversations');
  const [more, setMore] = useState<{ conversations: ConversationRecord[]; nextCursor: string | null } | null>(null);
  const [error, setError] = useState<string | null>(null);
  if (first.loading && !first.data) return <Loading what="conversations" />;
  if (first.error) return <ErrorState error={first.error} onRetry={first.reload} what="conversations" />;
  const rows = [...(first.data?.conversations ?? []), ...(more?.conversations ?? [])];
  const nextCursor = more ? more.nextCursor : (first.data?.nextCursor ?? null);
  const loadMore = async () => {
    try {
      const page = await api<{ conversations: ConversationRecord[]; nextCursor: string | null }>(`/api/v1/conversations${query({ limit: PAGE, cursor: nextCursor })}`);
      setMore((m) => ({ conversations: [...(m?.conversations ?? []), ...page.conversations], nextCursor: page.nextCursor }));
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  };
  return (
    <>
      <h1>Replay</h1>
      <p className="muted">Every conversation, newest first. Open one to see each step with its time and duration.</p>
      {rows.length === 0 ? (
        <Empty>No conversations yet.</Empty>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Agent</th>
                <th scope="col">Resolution</th>
                <th scope="col">Turns</th>
                <th scope="col">Cost</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((c) => (
                <tr key={c.id}>
                  <td>
                    <a href={href({ page: 'replay', conversationId: c.id })}>{formatTime(c.createdAt)}</a>
                  </td>
                  <td>{c.agentsUsed.join(', ') || c.agentId}</td>
                  <td>
                    <span className={`badge resolution-${c.resolution}`}>{c.resolution}</span>
                  </td>
                  <td>{c.turns}</td>
                  <td>{usd(c.usage.costUsd)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {error ? <p className="error-text">{error}</p> : null}
      {nextCursor ? (
        <button type="button" className="secondary" onClick={() => void loadMore()}>
          Load more
        </button>
      ) : null}
    </>
  );
}

const STEP_LABELS: Record<string, string> = {
  user_message: 'User message',
  route_decision: 'Routing',
  clarification: 'Clarification',
  agent_start: 'Agent started',
  agent_handoff: 'Handoff',
  tool_call: 'Tool call',
  approval_request: 'Approval requested',
  approval_decision: 'Approval decided',
  tool_result: 'Tool result',
  agent_reply: 'Agent reply',
  turn_end: 'Turn end',
  budget_exceeded: 'Budget exceeded',
  escalation: 'Escalation',
  escalation_delivery: 'Escalation delivered',
  operator_message: 'Operator message',
  handed_back: 'Handed back',
  external_event: 'Outside event',
  refusal: 'Refused message',
  session_end: 'Session ended',
};

function summary(step: ReplayStep): string {
  const d = step.data;
  const s = (v: unknown) => (typeof v === 'string' ? v : json(v));
  switch (step.type) {
    case 'user_message':
      return s(d.content);
    case 'agent_reply':
      return `${s(d.content)}${step.attempts && step.attempts > 1 ? ` (${step.attempts} attempts)` : ''}`;
    case 'tool_call':
      return `${s(d.name)} ${json(d.arguments)}`;
    case 'approval_request':
      return `${s(d.name)}, expires ${formatTime(s(d.expiresAt))}`;
    case 'approval_decision':
      return `${s(d.outcome)}${d.decidedBy ? ` by ${s(d.decidedBy)}` : ''}${d.feedback ? `: “${s(d.feedback)}”` : ''}`;
    case 'tool_result':
      return `${s(d.name)} ${s(d.status)}${d.error ? `: ${json(d.error)}` : ''}`;
    case 'turn_end':
      return `${s(d.status)}${step.error ? ` (${step.error.code})` : ''}`;
    case 'clarification':
      return s(d.question);
    case 'operator_message':
      return s(d.content);
    default:
      return json(d);
  }
}

function Timeline({ id }: { id: string }) {
  const first = useLoad((signal) => api<ReplayPage>(`/api/v1/conversations/${encodeURIComponent(id)}/replay${query({ limit: STEPS_PAGE })}`, { signal }), id);
  const [more, setMore] = useState<{ steps: ReplayStep[]; nextCursor: string | null } | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => setMore(null), [first.data]);
  if (first.loading && !first.data) return <Loading what="the replay" />;
  if (first.error) return <ErrorState error={first.error} onRetry={first.error.status >= 500 || first.error.status === 0 ? first.reload : undefined} what="this conversation" />;
  const page = first.data!;
  const c = page.conversation;
  const steps = [...page.steps, ...(more?.steps ?? [])];
  const nextCursor = more ? more.nextCursor : page.nextCursor;
  const start = steps[0] ? new Date(steps[0].at).getTime() : 0;
  const loadMore = async () => {
    try {
      const next = await api<ReplayPage>(`/api/v1/conversations/${encodeURIComponent(id)}/replay${query({ limit: STEPS_PAGE, cursor: nextCursor })}`);
      setMore((m) => ({ steps: [...(m?.steps ?? []), ...next.steps], nextCursor: next.nextCursor }));
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  };
  return (
    <>
      <p>
        <a href={href({ page: 'replay', conversationId: null })}>← All conversations</a> · <a href={href({ page: 'chat', sessionId: c.id })}>Open in chat</a>
      </p>
      <h1>Replay</h1>
      <dl className="facts">
        <div>
          <dt>Resolution</dt>
          <dd>
            <span className={`badge resolution-${c.resolution}`}>{c.resolution}</span>
          </dd>
        </div>
        <div>
          <dt>Agents</dt>
          <dd>{c.agentsUsed.join(', ') || c.agentId}</dd>
        </div>
        <div>
          <dt>Turns</dt>
          <dd>{c.turns}</dd>
        </div>
        <div>
          <dt>First response</dt>
          <dd>{duration(c.firstResponseMs)}</dd>
        </div>
        <div>
          <dt>Cost</dt>
          <dd>{usd(c.usage.costUsd)}</dd>
        </div>
      </dl>
      {steps.length === 0 ? (
        <Empty>This conversation has no steps yet.</Empty>
      ) : (
        <ol className="timeline" aria-label="Steps">
          {steps.map((step) => (
            <li key={step.seq} className={`step step-${step.type}`} data-testid="replay-step" data-type={step.type}>
              <div className="step-time">
                <time dateTime={step.at}>{new Date(step.at).toLocaleTimeString()}</time>
                <span className="muted small">+{duration(new Date(step.at).getTime() - start)}</span>
              </div>
              <div className="step-body">
                <p>
                  <strong>{STEP_LABELS[step.type] ?? step.type}</strong>
                  {step.turn !== null ? <span className="muted"> · turn {step.turn}</span> : null}
                  {step.durationMs !== null ? <span className="badge duration">took {duration(step.durationMs)}</span> : null}
                </p>
                <p className="step-summary">{summary(step)}</p>
              </div>
            </li>
          ))}
        </ol>
      )}
      {error ? <p className="error-text">{error}</p> : null}
      {nextCursor ? (
        <button type="button" className="secondary" onClick={() => void loadMore()}>
          Load more steps
        </button>
      ) : null}
    </>
  );
}
