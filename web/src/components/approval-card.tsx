import { useEffect, useId, useState } from 'react';
import { api, ApiError } from '../api/client';
import { json } from '../format';

/** Seconds left until `expiresAt`, ticking every second. */
export function Countdown({ expiresAt }: { expiresAt: string }) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, []);
  const left = Math.max(0, Math.ceil((new Date(expiresAt).getTime() - now) / 1000));
  if (left === 0) return <span className="countdown expired">expired</span>;
  const text = left >= 3600 ? `${Math.floor(left / 3600)} h ${Math.floor((left % 3600) / 60)} min` : left >= 60 ? `${Math.floor(left / 60)} min ${left % 60} s` : `${left} s`;
  return (
    <span className="countdown" title={new Date(expiresAt).toLocaleString()}>
      expires in <span data-testid="countdown">{text}</span>
    </span>
  );
}

export interface ApprovalCardProps {
  sessionId: string;
  toolCallId: string;
  name: string;
  arguments: unknown;
  digest: string;
  expiresAt: string | null;
  /** Set once the session says how it was decided. */
  outcome?: string | undefined;
  decidedBy?: string | null | undefined;
  onDecided?: (outcome: string) => void;
  children?: React.ReactNode;
}

/**
 * A tool call waiting for consent: its arguments, the time left, and approve / reject (with
 * optional feedback). The decision names the digest it was shown, so it binds to this exact call.
 */
export function ApprovalCard(props: ApprovalCardProps) {
  const feedbackId = useId();
  const [feedback, setFeedback] = useState('');
  const [busy, setBusy] = useState(false);
  const [sent, setSent] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const decided = props.outcome ?? sent;

  const decide = async (approved: boolean) => {
    setBusy(true);
    setError(null);
    try {
      const answer = await api<{ outcome: string }>(`/api/v1/sessions/${encodeURIComponent(props.sessionId)}/approvals/${encodeURIComponent(props.toolCallId)}`, {
        method: 'POST',
        body: { approved, digest: props.digest, ...(feedback.trim() ? { feedback: feedback.trim() } : {}) },
      });
      setSent(answer.outcome);
      props.onDecided?.(answer.outcome);
    } catch (e) {
      setError(e instanceof ApiError ? `${e.message} (${e.code})` : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <article className={`approval-card${decided ? ' decided' : ''}`} aria-label={`Approval for ${props.name}`} data-testid="approval-card" data-tool-call-id={props.toolCallId}>
      <header>
        <strong>
          Approval needed: <code>{props.name}</code>
        </strong>
        {decided ? (
          <span className={`badge outcome-${decided}`}>
            {decided}
            {props.decidedBy ? ` by ${props.decidedBy}` : ''}
          </span>
        ) : props.expiresAt ? (
          <Countdown expiresAt={props.expiresAt} />
        ) : null}
      </header>
      {props.children}
      <pre className="arguments" aria-label="Arguments">
        {json(props.arguments)}
      </pre>
      {decided ? null : (
        <div className="decision">
          <label htmlFor={feedbackId}>Feedback (optional)</label>
          <textarea id={feedbackId} rows={2} value={feedback} onChange={(e) => setFeedback(e.target.value)} disabled={busy} />
          <div className="buttons">
            <button type="button" className="approve" onClick={() => void decide(true)} disabled={busy}>
              Approve
            </button>
            <button type="button" className="reject" onClick={() => void decide(false)} disabled={busy}>
              Reject
            </button>
          </div>
        </div>
      )}
      {error ? (
        <p className="error-text" role="alert">
          {error}
        </p>
      ) : null}
      <p className="digest muted" title="The decision is bound to this digest of the tool, its arguments and the agent version.">
        digest <code>{props.digest.slice(0, 16)}…</code>
      </p>
    </article>
  );
}
