import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { checkClientFrame, type ClientFrame, type FrameCheck } from '../contracts/frames';
import { KeelError } from '../contracts/errors';
import { durableFrame } from '../contracts/events';
import { ID_PATTERN } from '../contracts/ids';
import { AfterSeqQuery } from '../contracts/rest';
import { lastSeq, notify } from '../db/events';
import { escalatedAsOf } from '../db/presence';
import type { TypingRole } from '../contracts/presence';
import { AgentStatusTracker } from './agent-status';
import { TypingThrottle } from './typing';
import { serveUserSocket, USER_WS_PATH } from './user-socket';
import type { ApiDeps } from './deps';
import { upgradeToken, type Caller } from './auth';
import { toKeelError } from './errors';
import type { Subscription } from './session-feed';
import { SerialQueue } from './serial-queue';
import { inFrameSpan, nameFrameSpan } from './tracing';

const WS_PATH = /^\/api\/v1\/sessions\/([^/]+)\/ws$/;
/** Frames above this are refused by ws itself (close 1009); below it our own limit answers with an error frame. */
const HARD_FRAME_LIMIT = 1024 * 1024;

/** Close codes (docs/protocol.md). */
export const CLOSE = {
  shuttingDown: 1001,
  streamFailed: 1011,
  tooSlow: 1013,
  unauthorized: 4001,
  tooManyFrames: 4008,
  tooManySockets: 4029,
  sessionDeleted: 4004,
} as const;

type OutFrame = { type: string; sessionId: string; seq?: number; lastSeq?: number; data: unknown };

function rejectUpgrade(socket: Duplex, error: KeelError) {
  const body = JSON.stringify({ error: error.toBody(randomUUID()) });
  const extra = error.retryAfter === undefined ? '' : `Retry-After: ${error.retryAfter}\r\n`;
  socket.end(`HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`);
}

/** The session ID of a WebSocket path, or undefined when it is not a well-formed ID (a malformed `%` included). */
function sessionIdOf(segment: string): string | undefined {
  try {
    const id = decodeURIComponent(segment);
    return ID_PATTERN.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

/** The WebSocket bridge: client frames become signals, session events become server frames. */
export function attachWebSocket(server: Server, deps: ApiDeps) {
  // Browsers cannot set headers on a WebSocket: they offer the token as a subprotocol, new WebSocket(url, ['bearer', token]).
  const wss = new WebSocketServer({ noServer: true, maxPayload: HARD_FRAME_LIMIT, handleProtocols: (protocols) => (protocols.has('bearer') ? 'bearer' : false) });
  const alive = new WeakMap<WebSocket, boolean>();

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgrade(req, socket, head).catch((error: unknown) => {
      const e = toKeelError(error);
      if (e.code === 'INTERNAL_ERROR') deps.log.error({ err: error }, 'websocket upgrade failed');
      rejectUpgrade(socket, e);
    });
  });

  async function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (deps.connections.stopping) return rejectUpgrade(socket, new KeelError('SERVICE_UNAVAILABLE', 'The server is shutting down; connect again'));
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname === USER_WS_PATH) return upgradeUserSocket(req, socket, head, url);
    const match = WS_PATH.exec(url.pathname);
    if (!match) return rejectUpgrade(socket, new KeelError('NOT_FOUND', 'No such route'));
    const sessionId = sessionIdOf(match[1]!);
    const query = AfterSeqQuery.safeParse(Object.fromEntries(url.searchParams));
    if (sessionId === undefined || !query.success) return rejectUpgrade(socket, new KeelError('VALIDATION_ERROR', 'Invalid session id or query'));
    const caller = await deps.auth.callerFor(upgradeToken(req, url));
    if (!caller) {
      // Close codes need an open socket: accept, then close with 4001 before anything else is sent.
      return wss.handleUpgrade(req, socket, head, (ws) => ws.close(CLOSE.unauthorized, 'unauthorized'));
    }
    await deps.limiter.requestByToken(caller.tokenKey);
    // Read before the check: a deletion after the check is then an event this socket gets (session.deleted).
    const seqAtCheck = await lastSeq(deps.pool, sessionId);
    const row = await deps.sessions.require(sessionId, caller);
    // agent.status frames are derived from the events this socket forwards, starting from the state at its cursor.
    const escalated = await escalatedAsOf(deps.pool, sessionId, query.data.after ?? seqAtCheck);
    if (refuseOverSocketLimit(req, socket, head, caller, sessionId)) return;
    // An admin who does not own the session writes into it as its operator.
    const role: TypingRole = caller.isAdmin && row.owner_id !== caller.userId ? 'operator' : 'user';
    wss.handleUpgrade(req, socket, head, (ws) => serve(ws, sessionId, query.data, caller, seqAtCheck, { role, escalated }));
  }

  /** Over KEEL_MAX_SOCKETS_PER_USER: an error frame a browser can read, then a close code it can branch on (true: refused). */
  function refuseOverSocketLimit(req: IncomingMessage, socket: Duplex, head: Buffer, caller: Caller, sessionId?: string): boolean {
    const maxSockets = deps.settings.rateLimits.socketsPerUser;
    if (maxSockets <= 0 || deps.connections.count('websocket', caller.userId) < maxSockets) return false;
    wss.handleUpgrade(req, socket, head, (ws) => {
      const error = new KeelError('RATE_LIMIT_EXCEEDED', `At most ${maxSockets} open WebSockets per user`, { retryAfter: 1 });
      deps.metrics.errors.inc({ code: error.code });
      ws.send(JSON.stringify({ type: 'error', ...(sessionId === undefined ? {} : { sessionId }), data: error.toBody(randomUUID()) }));
      ws.close(CLOSE.tooManySockets, 'too many open websockets');
    });
    return true;
  }

  /** GET /api/v1/ws: the per-user socket (api/user-socket.ts), authenticated and counted as a session socket is. */
  async function upgradeUserSocket(req: IncomingMessage, socket: Duplex, head: Buffer, url: URL): Promise<void> {
    const caller = await deps.auth.callerFor(upgradeToken(req, url));
    if (!caller) return wss.handleUpgrade(req, socket, head, (ws) => ws.close(CLOSE.unauthorized, 'unauthorized'));
    await deps.limiter.requestByToken(caller.tokenKey);
    if (refuseOverSocketLimit(req, socket, head, caller)) return;
    wss.handleUpgrade(req, socket, head, (ws) => {
      keepAlive(ws);
      serveUserSocket(ws, caller, deps, CLOSE);
    });
  }

  function keepAlive(ws: WebSocket) {
    alive.set(ws, true);
    ws.on('pong', () => alive.set(ws, true));
  }

  function serve(ws: WebSocket, sessionId: string, query: { after?: number; streamOffset?: number }, caller: Caller, seq: number, presence: { role: TypingRole; escalated: boolean }) {
    const limits = deps.settings.api;
    keepAlive(ws);

    const send = (frame: OutFrame) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
    };
    /** Ends the socket with one error frame (delivered after everything already queued) and a close code. */
    const closeWith = (code: number, reason: string, error: KeelError) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      deps.log.warn({ sessionId, code: error.code, closeCode: code }, 'websocket closed by the server');
      deps.metrics.errors.inc({ code: error.code });
      send({ type: 'error', sessionId, data: error.toBody(randomUUID()) });
      ws.close(code, reason);
    };
    /** Answers that are not events (pong, errors, acknowledgements): a client that sends but does not read is on the slow-consumer clock too. */
    const reply = (frame: OutFrame) => {
      if (ws.bufferedAmount > limits.maxBufferedBytes) subscription?.checkBacklog();
      send(frame);
    };
    const sendError = (error: KeelError, requestId: string, extra: Record<string, unknown> = {}) => {
      deps.metrics.errors.inc({ code: error.code });
      reply({ type: 'error', sessionId, data: { ...error.toBody(requestId), ...extra } });
    };
    const unauthorized = () => closeWith(CLOSE.unauthorized, 'token revoked', new KeelError('UNAUTHORIZED', 'The token is no longer valid'));

    deps.metrics.openWebSockets.inc();
    const unregister = deps.connections.add({
      kind: 'websocket',
      userId: caller.userId,
      tokenKey: caller.tokenKey,
      end: (reason) => (reason === 'revoked' ? unauthorized() : ws.close(CLOSE.shuttingDown, 'server shutting down')),
    });
    let subscription: Subscription | undefined;
    // Presence (docs/presence.md): typing goes to the session's other sockets through the event
    // channel (so across API processes), never stored; agent.status follows the events sent here.
    const connectionId = randomUUID();
    const typing = new TypingThrottle(deps.settings.presence.typingIntervalMs, (active) => {
      notify(deps.pool, { k: 't', sessionId, from: connectionId, userId: caller.userId, role: presence.role, active }).catch((error: unknown) =>
        deps.log.warn({ err: error, sessionId }, 'typing relay failed'),
      );
    });
    let stopTyping: (() => void) | undefined;
    const status = new AgentStatusTracker(presence.escalated);
    let closed = false;
    const onClosed = () => {
      if (closed) return;
      closed = true;
      deps.metrics.openWebSockets.dec();
      unregister();
      subscription?.close();
      stopTyping?.();
      typing.close();
    };
    ws.on('close', onClosed);
    ws.on('error', onClosed);

    // `connected` is always the first frame: frame answers wait for it (the queue's first job sends it).
    let connectedSent!: () => void;
    const connected = new Promise<void>((resolve) => (connectedSent = resolve));
    const inbound = new SerialQueue((error) => deps.log.error({ err: error, sessionId }, 'websocket queue failed'));
    inbound.push(async () => {
      try {
        send({ type: 'connected', sessionId, lastSeq: seq, data: { lastSeq: seq } });
        if (closed) return;
        subscription = deps.feed.open(
          { sessionId, after: query.after ?? seq, ...(query.streamOffset === undefined ? {} : { streamOffset: query.streamOffset }) },
          {
            event: (e) => {
              send(durableFrame(e));
              const now = status.next(e);
              if (now) send({ type: 'agent.status', sessionId, data: now });
            },
            delta: (d) => send({ type: 'stream.delta', sessionId, data: d }),
            backlog: () => ws.bufferedAmount,
            stopped: (error) =>
              error.code === 'CONSUMER_TOO_SLOW'
                ? closeWith(CLOSE.tooSlow, 'client too slow; reconnect with ?after=', error)
                : error.code === 'SESSION_NOT_FOUND'
                  ? closeWith(CLOSE.sessionDeleted, 'session deleted', error)
                  : closeWith(CLOSE.streamFailed, 'stream failed; reconnect with ?after=', error),
          },
        );
        // Others' typing: best effort, so a client over its byte budget simply misses some.
        stopTyping = deps.hub.subscribe(sessionId, {
          onEvent: () => undefined,
          onNotified: () => undefined,
          onDelta: () => undefined,
          onResync: () => undefined,
          onTyping: ({ from, userId, role, active }) => {
            if (from !== connectionId && ws.bufferedAmount <= limits.maxBufferedBytes) send({ type: 'typing', sessionId, data: { userId, role, active } });
          },
        });
      } catch (error) {
        deps.log.warn({ err: error, sessionId }, 'websocket stream failed');
        ws.close(CLOSE.streamFailed, 'stream failed; reconnect with ?after=');
      } finally {
        connectedSent();
      }
    });

    /** The caller as of now: a token revoked since the connect stops acting at once (lookups are cached up to KEEL_TOKEN_CACHE_MS). */
    const currentCaller = async (): Promise<Caller | null> => {
      const now = await deps.auth.callerForKey(caller.tokenKey);
      if (!now) unauthorized();
      return now;
    };

    const act = async (frame: Exclude<ClientFrame, { type: 'ping' | 'typing' }>, requestId: string) => {
      const context = frame.type === 'message' && frame.clientMessageId ? { clientMessageId: frame.clientMessageId } : frame.type === 'approval' ? { toolCallId: frame.toolCallId } : {};
      try {
        const current = await currentCaller();
        if (!current) return;
        // Messages count against the session's limit (in sendMessage); other acting frames against the token's.
        if (frame.type !== 'message') await deps.limiter.requestByToken(current.tokenKey);
        if (frame.type === 'message') {
          await deps.sessions.sendMessage(current, sessionId, frame.content, frame.clientMessageId, 'websocket', requestId);
        } else if (frame.type === 'cancel') {
          const result = await deps.sessions.cancelTurn(current, sessionId, { ...(frame.turn === undefined ? {} : { turn: frame.turn }), requestId });
          await connected;
          reply({ type: 'cancel.result', sessionId, data: { cancelled: result.cancelled, turn: result.turn } });
        } else {
          const { toolCallId, approved, feedback, digest } = frame;
          const result = await deps.sessions.decideApproval(current, sessionId, { toolCallId, approved, decidedBy: current.userId, ...(feedback === undefined ? {} : { feedback }), ...(digest === undefined ? {} : { digest }) });
          reply({ type: 'approval.accepted', sessionId, data: result });
        }
      } catch (error) {
        const e = toKeelError(error);
        if (e.code === 'INTERNAL_ERROR') deps.log.error({ err: error, sessionId, requestId }, 'websocket frame failed');
        await connected;
        sendError(e, requestId, context);
      }
    };

    const handle = async (check: FrameCheck, requestId: string) => {
      if (!check.ok) return sendError(new KeelError(check.code, check.message, check.field ? { field: check.field } : undefined), requestId);
      nameFrameSpan(check.frame.type);
      if (check.frame.type === 'ping') return reply({ type: 'pong', sessionId, data: {} });
      if (check.frame.type === 'typing') return;
      await act(check.frame, requestId);
    };

    // Frames are checked as they arrive (so a waiting frame holds its parsed form, never its raw bytes) and
    // handled in order through one queue, at most KEEL_WS_MAX_PENDING_FRAMES at a time. A cancel never waits
    // behind slow work: it runs at once (its answer still follows `connected`).
    let pending = 0;
    ws.on('message', (raw: RawData, isBinary: boolean) => {
      if (pending >= limits.wsMaxPendingFrames) {
        const error = new KeelError('RATE_LIMIT_EXCEEDED', `Too many frames waiting: at most ${limits.wsMaxPendingFrames} per socket`, { retryAfter: 1 });
        if (subscription) return closeWith(CLOSE.tooManyFrames, 'too many frames waiting', error);
        return ws.close(CLOSE.tooManyFrames, 'too many frames waiting');
      }
      // Each frame is a request of its own: its ID is in its error frame and in the turn's log lines.
      const requestId = randomUUID();
      const check = checkClientFrame(isBinary ? '\u0000' : raw.toString(), limits);
      // Typing is relayed at once (throttled per socket), never queued behind other frames or answered.
      if (check.ok && check.frame.type === 'typing') return typing.push(check.frame.active);
      pending++;
      const job = inFrameSpan(sessionId, () => handle(check, requestId).finally(() => pending--));
      if (check.ok && check.frame.type === 'cancel') {
        job().catch((error: unknown) => deps.log.error({ err: error, sessionId }, 'websocket cancel failed'));
      } else {
        inbound.push(job);
      }
    });
  }

  const heartbeat = setInterval(() => {
    for (const ws of wss.clients) {
      if (alive.get(ws) === false) {
        ws.terminate();
        continue;
      }
      alive.set(ws, false);
      ws.ping();
    }
  }, deps.settings.api.wsPingIntervalMs);
  heartbeat.unref();

  return {
    wss,
    /** Closes every socket with 1001, waits up to `graceMs` for their close handshakes, then drops the rest. */
    close: async (graceMs: number) => {
      clearInterval(heartbeat);
      for (const ws of wss.clients) ws.close(CLOSE.shuttingDown, 'server shutting down');
      const deadline = Date.now() + graceMs;
      while (wss.clients.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
}
