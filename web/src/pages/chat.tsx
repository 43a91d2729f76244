import { useEffect, useId, useState, type FormEvent } from 'react';
import { api, ApiError, query } from '../api/client';
import type { Agent, Session, SessionPage } from '../api/types';
import { Empty, ErrorState, Loading } from '../components/states';
import { ago } from '../format';
import { href, navigate } from '../router';
import { useLoad } from '../use-load';
import { ConversationView } from './conversation-view';

const PAGE = 20;

/** Sessions on the left (newest first, a page at a time), the open conversation on the right. */
export function ChatPage({ sessionId }: { sessionId: string | null }) {
  const [listVersion, setListVersion] = useState(0);
  return (
    <div className={`chat-layout${sessionId ? ' has-session' : ''}`}>
      <aside className="session-pane" aria-label="Sessions">
        <NewSession onCreated={(s) => (setListVersion((v) => v + 1), navigate({ page: 'chat', sessionId: s.id }))} />
        <SessionList selected={sessionId} version={listVersion} />
      </aside>
      <section className="conversation-pane" aria-label="Conversation">
        {sessionId ? (
          <>
            <a className="back-link" href={href({ page: 'chat', sessionId: null })}>
              ← All sessions
            </a>
            <ConversationView key={sessionId} sessionId={sessionId} onTurnDone={() => setListVersion((v) => v + 1)} />
          </>
        ) : (
          <Empty>
            <p>Choose a session, or start a new one.</p>
          </Empty>
        )}
      </section>
    </div>
  );
}

function NewSession({ onCreated }: { onCreated: (s: Session) => void }) {
  const agentsId = useId();
  const titleId = useId();
  const agents = useLoad((signal) => api<{ agents: Agent[] }>('/api/v1/agents', { signal }), 'agents');
  const [agentId, setAgentId] = useState('');
  const [title, setTitle] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const list = agents.data?.agents ?? [];
  const chosen = agentId || list.find((a) => a.id === 'default')?.id || list[0]?.id || '';

  const create = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const session = await api<Session>('/api/v1/sessions', { method: 'POST', body: { ...(chosen ? { agentId: chosen } : {}), ...(title.trim() ? { title: title.trim() } : {}) } });
      setTitle('');
      onCreated(session);
    } catch (e) {
      setError(e instanceof ApiError ? `${e.message} (${e.code})` : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form className="new-session card" onSubmit={(e) => void create(e)} aria-label="New session">
      <h2>New session</h2>
      {agents.loading && !agents.data ? <Loading what="agents" /> : null}
      {agents.error ? <ErrorState error={agents.error} onRetry={agents.reload} what="the agents" /> : null}
      {agents.data && list.length === 0 ? <Empty>No agents are defined.</Empty> : null}
      <label htmlFor={agentsId}>Agent</label>
      <select id={agentsId} value={chosen} onChange={(e) => setAgentId(e.target.value)} disabled={list.length === 0}>
        {list.map((a) => (
          <option key={a.id} value={a.id}>
            {a.name} ({a.id} v{a.version})
          </option>
        ))}
      </select>
      <label htmlFor={titleId}>Title (optional)</label>
      <input id={titleId} value={title} onChange={(e) => setTitle(e.target.value)} maxLength={200} />
      {error ? (
        <p className="error-text" role="alert">
          {error}
        </p>
      ) : null}
      <button type="submit" disabled={busy || list.length === 0}>
        {busy ? 'Creating…' : 'Start session'}
      </button>
    </form>
  );
}

function SessionList({ selected, version }: { selected: string | null; version: number }) {
  const first = useLoad((signal) => api<SessionPage>(`/api/v1/sessions${query({ limit: PAGE })}`, { signal }), `sessions-${version}`);
  const [more, setMore] = useState<{ sessions: Session[]; nextCursor: string | null } | null>(null);
  const [moreError, setMoreError] = useState<string | null>(null);
  const [loadingMore, setLoadingMore] = useState(false);
  useEffect(() => setMore(null), [first.data]);

  if (first.loading && !first.data) return <Loading what="sessions" />;
  if (first.error) return <ErrorState error={first.error} onRetry={first.reload} what="your sessions" />;
  const sessions = [...(first.data?.sessions ?? []), ...(more?.sessions ?? [])];
  const nextCursor = more ? more.nextCursor : (first.data?.nextCursor ?? null);

  const loadMore = async () => {
    if (!nextCursor) return;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const page = await api<SessionPage>(`/api/v1/sessions${query({ limit: PAGE, cursor: nextCursor })}`);
      setMore((m) => ({ sessions: [...(m?.sessions ?? []), ...page.sessions], nextCursor: page.nextCursor }));
    } catch (e) {
      setMoreError(e instanceof ApiError ? e.message : String(e));
    } finally {
      setLoadingMore(false);
    }
  };

  if (sessions.length === 0) return <Empty>No sessions yet: start one above.</Empty>;
  return (
    <nav aria-label="Your sessions">
      <ul className="session-list">
        {sessions.map((s) => (
          <li key={s.id}>
            <a href={href({ page: 'chat', sessionId: s.id })} aria-current={s.id === selected ? 'page' : undefined} className="session-link">
              <span className="session-title">{s.title || 'Untitled session'}</span>
              <span className="session-meta">
                {s.agentId}
                {s.agentVersion ? ` v${s.agentVersion}` : ''} · <span className={`status status-${s.status}`}>{s.status}</span> · {ago(s.lastActivityAt ?? s.updatedAt)}
              </span>
              {s.pendingApprovals ? (
                <span className="badge pending" aria-label={`${s.pendingApprovals} pending approvals`}>
                  {s.pendingApprovals}
                </span>
              ) : null}
            </a>
          </li>
        ))}
      </ul>
      {moreError ? (
        <p className="error-text" role="alert">
          {moreError}
        </p>
      ) : null}
      {nextCursor ? (
        <button type="button" className="secondary" onClick={() => void loadMore()} disabled={loadingMore}>
          {loadingMore ? 'Loading…' : 'Load more'}
        </button>
      ) : null}
    </nav>
  );
}
