import { useEffect, useRef, useState } from 'react';
import { api, query } from '../api/client';
import { LiveSocket, type SocketStatus } from '../api/live-socket';
import type { PendingApproval } from '../api/types';
import { ApprovalCard } from '../components/approval-card';
import { Empty, ErrorState, Loading } from '../components/states';
import { ago } from '../format';
import { href } from '../router';
import { useLoad } from '../use-load';

/**
 * Every approval waiting in the caller's sessions, oldest first, decided in place. The per-user
 * socket (`/api/v1/ws`) says when one is asked for or decided elsewhere; it replays nothing, so
 * the list is read again whenever it (re)connects.
 */
export function ApprovalsPage() {
  const [version, setVersion] = useState(0);
  const pending = useLoad((signal) => api<{ approvals: PendingApproval[] }>(`/api/v1/approvals${query({ status: 'pending', limit: 100 })}`, { signal }), `approvals-${version}`);
  const [resolved, setResolved] = useState<Record<string, string>>({});
  const [live, setLive] = useState<SocketStatus>('connecting');
  const reload = useRef(() => setVersion((v) => v + 1));

  useEffect(() => {
    const socket = new LiveSocket({
      url: () => '/api/v1/ws',
      onFrame: (frame) => {
        if (frame.type === 'approval.required') reload.current();
        if (frame.type === 'approval.resolved') {
          const id = String(frame.data.toolCallId);
          setResolved((r) => ({ ...r, [id]: String(frame.data.outcome) }));
        }
      },
      onStatus: (status) => {
        setLive(status);
        // Whatever happened while the socket was away is read from the API.
        if (status === 'open') reload.current();
      },
    });
    socket.start();
    return () => socket.stop();
  }, []);

  // Decided ones stay in place, with their outcome, until the list is read again.
  const approvals = pending.data?.approvals ?? [];
  const waiting = approvals.filter((a) => !resolved[a.toolCallId]);

  return (
    <main className="page" id="main">
      <header className="page-header">
        <h1>Approvals</h1>
        <span className={`badge connection-${live}`} data-testid="connection">
          {live === 'open' ? 'live' : live}
        </span>
      </header>
      {live === 'reconnecting' ? (
        <div className="banner warn" role="status">
          Live updates paused. Reconnecting…
        </div>
      ) : null}
      <p className="muted">Tool calls waiting for a decision in your sessions, oldest first. A decision is bound to the digest of the exact call shown.</p>
      {pending.loading && !pending.data ? <Loading what="approvals" /> : null}
      {pending.error ? <ErrorState error={pending.error} onRetry={pending.reload} what="the approvals" /> : null}
      {pending.data && waiting.length === 0 ? (
        <Empty>
          <p data-testid="no-approvals">Nothing waits for approval.</p>
        </Empty>
      ) : null}
      <ul className="approval-list">
        {approvals.map((a) => (
          <li key={a.toolCallId}>
            <ApprovalCard sessionId={a.sessionId} toolCallId={a.toolCallId} name={a.name} arguments={a.arguments} digest={a.digest} expiresAt={a.expiresAt} outcome={resolved[a.toolCallId]} onDecided={(outcome) => setResolved((r) => ({ ...r, [a.toolCallId]: outcome }))}>
              <p className="muted small">
                Session <a href={href({ page: 'chat', sessionId: a.sessionId })}>{a.sessionId}</a> · turn {a.turn} · asked {ago(a.requestedAt)}
              </p>
            </ApprovalCard>
          </li>
        ))}
      </ul>
    </main>
  );
}
