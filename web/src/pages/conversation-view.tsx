import { useEffect, useId, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';
import { api, ApiError, newClientMessageId, query } from '../api/client';
import { LiveSocket, type SocketStatus } from '../api/live-socket';
import type { ServerFrame, Session } from '../api/types';
import { ApprovalCard } from '../components/approval-card';
import { ErrorState, Loading } from '../components/states';
import { json } from '../format';
import { href } from '../router';
import { useLoad } from '../use-load';
import { emptyConversation, reduce, sentFrame, streamOffsetOf, type ChatItem, type ConversationState, type ToolItem } from '../chat/conversation';

/**
 * One session: its whole event log replayed over the WebSocket (`?after=0`), then live. After a
 * drop the socket reconnects with `?after=<last seq>&streamOffset=<characters of the reply in
 * progress>`, so the reply goes on where it was cut, without a gap or a repeat.
 */
export function ConversationView({ sessionId, onTurnDone }: { sessionId: string; onTurnDone: () => void }) {
  const session = useLoad((signal) => api<Session>(`/api/v1/sessions/${encodeURIComponent(sessionId)}`, { signal }), sessionId);
  const store = useRef<ConversationState>(emptyConversation);
  const [state, setState] = useState<ConversationState>(emptyConversation);
  const [status, setStatus] = useState<{ status: SocketStatus; detail?: string | undefined }>({ status: 'connecting' });
  const [historyUntil, setHistoryUntil] = useState<number | null>(null);
  const onTurnDoneRef = useRef(onTurnDone);
  onTurnDoneRef.current = onTurnDone;
  const found = session.data?.id;

  const dispatch = (frame: ServerFrame) => {
    const next = reduce(store.current, frame);
    if (next === store.current) return;
    store.current = next;
    setState(next);
  };

  useEffect(() => {
    if (!found) return;
    store.current = emptyConversation;
    setState(emptyConversation);
    const socket = new LiveSocket({
      url: () => `/api/v1/sessions/${encodeURIComponent(found)}/ws${query({ after: store.current.lastSeq, streamOffset: streamOffsetOf(store.current) })}`,
      onFrame: (frame) => {
        if (frame.type === 'connected') setHistoryUntil((h) => h ?? Number(frame.lastSeq ?? frame.data?.lastSeq ?? 0));
        dispatch(frame);
        // The session list shows the status and pending approvals: read it again when they change.
        if (frame.type === 'turn.done' || frame.type === 'approval.required' || frame.type === 'approval.resolved') onTurnDoneRef.current();
      },
      onStatus: (s, detail) => setStatus({ status: s, detail }),
    });
    socket.start();
    return () => socket.stop();
  }, [found]);

  if (session.loading && !session.data) return <Loading what="the session" />;
  if (session.error) return <ErrorState error={session.error} onRetry={session.error.status === 404 ? undefined : session.reload} what="this session" />;
  const s = session.data!;
  const loadingHistory = historyUntil === null || state.lastSeq < historyUntil;

  return (
    <div className="conversation">
      <header className="conversation-header">
        <div>
          <h1>{s.title || 'Untitled session'}</h1>
          <p className="muted">
            {s.agentId}
            {s.agentVersion ? ` v${s.agentVersion}` : ''} · <span className={`status status-${state.ended ?? s.status}`}>{state.ended ?? s.status}</span> ·{' '}
            <a href={href({ page: 'replay', conversationId: s.id })}>Replay</a>
          </p>
        </div>
        <ConnectionBadge status={status.status} />
      </header>
      {status.status === 'reconnecting' ? (
        <div className="banner warn" role="status" data-testid="reconnect-banner">
          Connection lost. Reconnecting… The reply continues where it stopped.
        </div>
      ) : null}
      {status.status === 'closed' && status.detail !== 'unauthorized' ? (
        <div className="banner error" role="alert">
          {status.detail ?? 'The connection closed.'}
        </div>
      ) : null}
      <Messages sessionId={s.id} items={state.items} loading={loadingHistory} />
      {state.runningTurn !== null && state.agentStatus && state.agentStatus !== 'idle' ? (
        <p className="agent-status muted" role="status">
          {state.agentStatus.replaceAll('_', ' ')}…
        </p>
      ) : null}
      <Composer sessionId={s.id} disabled={s.status !== 'active' || state.ended !== null} runningTurn={state.runningTurn} dispatch={dispatch} />
    </div>
  );
}

function ConnectionBadge({ status }: { status: SocketStatus }) {
  const label = { connecting: 'connecting', open: 'live', reconnecting: 'reconnecting', closed: 'offline' }[status];
  return (
    <span className={`badge connection-${status}`} data-testid="connection">
      {label}
    </span>
  );
}

function Messages({ sessionId, items, loading }: { sessionId: string; items: ChatItem[]; loading: boolean }) {
  const list = useRef<HTMLOListElement>(null);
  const stick = useRef(true);
  useEffect(() => {
    const el = list.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [items]);
  const visible = items.filter((i) => !(i.kind === 'assistant' && i.done && i.text === ''));
  return (
    <ol
      className="messages"
      ref={list}
      aria-label="Messages"
      aria-live="polite"
      aria-busy={loading}
      onScroll={(e) => {
        const el = e.currentTarget;
        stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
      }}
    >
      {loading && visible.length === 0 ? (
        <li className="state">
          <Loading what="the conversation" />
        </li>
      ) : null}
      {!loading && visible.length === 0 ? <li className="state state-empty">No messages yet. Say something below.</li> : null}
      {visible.map((item) => (
        <li key={item.key} className={`item item-${item.kind}`}>
          <Item sessionId={sessionId} item={item} />
        </li>
      ))}
    </ol>
  );
}

function Item({ sessionId, item }: { sessionId: string; item: ChatItem }) {
  switch (item.kind) {
    case 'user':
      return (
        <div className="bubble user" data-testid="user-message">
          <p>{item.content}</p>
          {item.pending ? <span className="muted small">sending…</span> : null}
          {item.refused ? <span className="error-text small">not taken: {item.refused}</span> : null}
        </div>
      );
    case 'assistant':
      return (
        <div className={`bubble assistant${item.done ? '' : ' streaming'}`} data-testid="assistant-message" data-stream-id={item.streamId} data-done={item.done}>
          {item.restarted ? (
            <span className="restarted" data-testid="restarted" title="The model call was retried: the earlier attempt's text was replaced.">
              ↻ restarted (attempt {item.attempt})
            </span>
          ) : null}
          <p data-testid="assistant-text">{item.text}</p>
          {!item.done && item.text === '' ? <span className="muted small">thinking…</span> : null}
        </div>
      );
    case 'tool':
      return <ToolCall sessionId={sessionId} item={item} />;
    case 'notice':
      return (
        <p className={`notice ${item.tone}`} role={item.tone === 'error' ? 'alert' : undefined}>
          {item.text}
        </p>
      );
  }
}

function ToolCall({ sessionId, item }: { sessionId: string; item: ToolItem }) {
  const pending = item.approval && !item.approval.outcome && !item.result;
  return (
    <div className="tool-call" data-testid="tool-call" data-tool={item.name}>
      {pending ? (
        <ApprovalCard sessionId={sessionId} toolCallId={item.toolCallId} name={item.name} arguments={item.arguments} digest={item.approval!.digest} expiresAt={item.approval!.expiresAt} />
      ) : (
        <>
          <p>
            Tool <code>{item.name}</code>
            {item.approval?.outcome ? (
              <span className={`badge outcome-${item.approval.outcome}`}>
                {item.approval.outcome}
                {item.approval.decidedBy ? ` by ${item.approval.decidedBy}` : ''}
              </span>
            ) : null}
            {item.approval?.feedback ? <span className="muted"> “{item.approval.feedback}”</span> : null}
          </p>
          <details>
            <summary>Arguments</summary>
            <pre className="arguments">{json(item.arguments)}</pre>
          </details>
        </>
      )}
      {item.result ? (
        <div className="tool-result" data-testid="tool-result" data-status={item.result.status}>
          <span className={`badge result-${item.result.status}`}>{item.result.status}</span>
          {item.result.error ? (
            <span className="error-text">
              {' '}
              {item.result.error.code}: {item.result.error.message}
            </span>
          ) : null}
          {item.result.result !== undefined ? <pre className="result">{json(item.result.result)}</pre> : null}
        </div>
      ) : pending ? null : (
        <p className="muted small">{item.approval?.outcome === 'approved' || !item.requiresApproval ? 'running…' : ''}</p>
      )}
    </div>
  );
}

function Composer({ sessionId, disabled, runningTurn, dispatch }: { sessionId: string; disabled: boolean; runningTurn: number | null; dispatch: (f: ServerFrame) => void }) {
  const inputId = useId();
  const [text, setText] = useState('');
  const [sending, setSending] = useState(false);
  const [note, setNote] = useState<string | null>(null);

  const send = async (event?: FormEvent) => {
    event?.preventDefault();
    const content = text.trim();
    if (!content || sending) return;
    const clientMessageId = newClientMessageId();
    dispatch(sentFrame(content, clientMessageId));
    setText('');
    setSending(true);
    setNote(null);
    try {
      await api(`/api/v1/sessions/${encodeURIComponent(sessionId)}/messages`, { method: 'POST', body: { content, clientMessageId } });
    } catch (e) {
      const error = e instanceof ApiError ? e : new ApiError(0, 'CLIENT_ERROR', String(e));
      dispatch({ type: 'error', data: { code: error.code, message: error.message, clientMessageId } });
    } finally {
      setSending(false);
    }
  };

  const cancel = async () => {
    if (runningTurn === null) return;
    setNote(null);
    try {
      const answer = await api<{ cancelled: boolean; turn: number }>(`/api/v1/sessions/${encodeURIComponent(sessionId)}/cancel`, { method: 'POST', body: { turn: runningTurn } });
      if (!answer.cancelled) setNote('The turn had already finished.');
    } catch (e) {
      setNote(e instanceof ApiError ? `Could not cancel: ${e.message}` : String(e));
    }
  };

  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) void send(e);
  };

  return (
    <form className="composer" onSubmit={(e) => void send(e)}>
      <label htmlFor={inputId} className="visually-hidden">
        Message
      </label>
      <textarea id={inputId} rows={2} value={text} onChange={(e) => setText(e.target.value)} onKeyDown={onKey} placeholder={disabled ? 'This session has ended.' : 'Write a message (Enter sends, Shift+Enter for a new line)'} disabled={disabled} maxLength={10_000} />
      <div className="composer-buttons">
        <button type="submit" disabled={disabled || sending || !text.trim()}>
          Send
        </button>
        {runningTurn !== null ? (
          <button type="button" className="secondary" onClick={() => void cancel()}>
            Stop turn {runningTurn}
          </button>
        ) : null}
      </div>
      {note ? (
        <p className="muted small" role="status">
          {note}
        </p>
      ) : null}
    </form>
  );
}
