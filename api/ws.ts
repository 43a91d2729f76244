import { randomUUID } from 'node:crypto';
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { checkClientFrame } from '../contracts/frames';
import { KeelError } from '../contracts/errors';
import { durableFrame, type ServerFrame } from '../contracts/events';
import { ID_PATTERN } from '../contracts/ids';
import { AfterSeqQuery } from '../contracts/rest';
import { lastSeq } from '../db/events';
import type { ApiDeps } from './deps';
import type { Caller } from './auth';
import { toKeelError } from './errors';
import { openSessionStream } from './session-stream';
import { SerialQueue } from './serial-queue';
import { inFrameSpan, nameFrameSpan } from './tracing';

const WS_PATH = /^\/api\/v1\/sessions\/([^/]+)\/ws$/;
/** Frames above this are refused by ws itself (close 1009); below it our own limit answers with an error frame. */
const HARD_FRAME_LIMIT = 1024 * 1024;
/** A client this far behind is disconnected; it resumes with ?after=. */
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
const CLOSE_TOO_MANY_SOCKETS = 4029;

/** The token from `?token=`, the `bearer, <token>` subprotocol, or an Authorization header. */
function tokenOf(req: IncomingMessage, url: URL): string | undefined {
  const fromQuery = url.searchParams.get('token');
  if (fromQuery) return fromQuery;
  const protocols = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
  const index = protocols.indexOf('bearer');
  if (index >= 0 && protocols[index + 1]) return protocols[index + 1];
  return /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1];
}

function rejectUpgrade(socket: Duplex, error: KeelError) {
  const body = JSON.stringify({ error: error.toBody(randomUUID()) });
  const extra = error.retryAfter === undefined ? '' : `Retry-After: ${error.retryAfter}\r\n`;
  socket.end(`HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`);
}

/** The WebSocket bridge: client frames become signals, session events become server frames. */
export function attachWebSocket(server: Server, deps: ApiDeps) {
  // Browsers cannot set headers on a WebSocket: they offer the token as a subprotocol, new WebSocket(url, ['bearer', token]).
  const wss = new WebSocketServer({ noServer: true, maxPayload: HARD_FRAME_LIMIT, handleProtocols: (protocols) => (protocols.has('bearer') ? 'bearer' : false) });
  const alive = new WeakMap<WebSocket, boolean>();
  /** Open sockets per user in this process (KEEL_MAX_SOCKETS_PER_USER is a per-process limit). */
  const socketsByUser = new Map<string, number>();

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://localhost');
      const match = WS_PATH.exec(url.pathname);
      if (!match) return rejectUpgrade(socket, new KeelError('NOT_FOUND', 'No such route'));
      const sessionId = decodeURIComponent(match[1]!);
      const query = AfterSeqQuery.safeParse(Object.fromEntries(url.searchParams));
      if (!ID_PATTERN.test(sessionId) || !query.success) return rejectUpgrade(socket, new KeelError('VALIDATION_ERROR', 'Invalid session id or query'));
      const caller = await deps.auth.callerFor(tokenOf(req, url));
      if (!caller) {
        // Close codes need an open socket: accept, then close with 4001 before anything else is sent.
        return wss.handleUpgrade(req, socket, head, (ws) => ws.close(4001, 'unauthorized'));
      }
      try {
        await deps.limiter.requestByToken(caller.tokenKey);
        await deps.sessions.require(sessionId, caller);
      } catch (error) {
        const e = toKeelError(error);
        return rejectUpgrade(socket, e);
      }
      const maxSockets = deps.settings.rateLimits.socketsPerUser;
      if (maxSockets > 0 && (socketsByUser.get(caller.userId) ?? 0) >= maxSockets) {
        // An error frame a browser can read, then a close code it can branch on.
        return wss.handleUpgrade(req, socket, head, (ws) => {
          const error = new KeelError('RATE_LIMIT_EXCEEDED', `At most ${deps.settings.rateLimits.socketsPerUser} open WebSockets per user`, { retryAfter: 1 });
          deps.metrics.errors.inc({ code: error.code });
          ws.send(JSON.stringify({ type: 'error', sessionId, data: error.toBody(randomUUID()) }));
          ws.close(CLOSE_TOO_MANY_SOCKETS, 'too many open websockets');
        });
      }
      wss.handleUpgrade(req, socket, head, (ws) => serve(ws, sessionId, query.data, caller));
    })().catch((error: unknown) => {
      deps.log.error({ err: error }, 'websocket upgrade failed');
      socket.destroy();
    });
  });

  function serve(ws: WebSocket, sessionId: string, query: { after?: number; streamOffset?: number }, caller: Caller) {
    alive.set(ws, true);
    ws.on('pong', () => alive.set(ws, true));
    const send = (frame: ServerFrame | { type: string; sessionId: string; data: unknown }) => {
      if (ws.readyState !== WebSocket.OPEN) return;
      if (ws.bufferedAmount > MAX_BUFFERED_BYTES) return ws.close(1013, 'client too slow; reconnect with ?after=');
      ws.send(JSON.stringify(frame));
    };
    const sendError = (error: KeelError, requestId: string, extra: Record<string, unknown> = {}) => {
      deps.metrics.errors.inc({ code: error.code });
      send({ type: 'error', sessionId, data: { ...error.toBody(requestId), ...extra } });
    };
    deps.metrics.openWebSockets.inc();
    socketsByUser.set(caller.userId, (socketsByUser.get(caller.userId) ?? 0) + 1);
    ws.once('close', () => {
      deps.metrics.openWebSockets.dec();
      const left = (socketsByUser.get(caller.userId) ?? 1) - 1;
      if (left > 0) socketsByUser.set(caller.userId, left);
      else socketsByUser.delete(caller.userId);
    });

    // Handlers are attached at once and work runs through one queue: frames that arrive while
    // the replay is being set up are neither lost nor reordered.
    const inbound = new SerialQueue((error) => deps.log.error({ err: error, sessionId }, 'websocket queue failed'));
    let stream: { close(): void } | undefined;
    let closed = false;
    const closeStream = () => {
      closed = true;
      stream?.close();
    };
    ws.on('close', closeStream);
    ws.on('error', closeStream);
    inbound.push(async () => {
      const seq = await lastSeq(deps.pool, sessionId);
      send({ type: 'connected', sessionId, lastSeq: seq, data: { lastSeq: seq } });
      stream = await openSessionStream(
        deps.hub,
        deps.pool,
        { sessionId, after: query.after ?? seq, ...(query.streamOffset === undefined ? {} : { streamOffset: query.streamOffset }) },
        { event: (e) => send(durableFrame(e)), delta: (d) => send({ type: 'stream.delta', sessionId, data: d }) },
        (error) => {
          deps.log.warn({ err: error, sessionId }, 'websocket stream failed');
          ws.close(1011, 'stream failed; reconnect with ?after=');
        },
      );
      if (closed) stream.close();
    });
    ws.on('message', (raw: RawData, isBinary: boolean) => {
      inbound.push(inFrameSpan(sessionId, async () => {
        // Each frame is a request of its own: its ID is in its error frame and in the turn's log lines.
        const requestId = randomUUID();
        const check = checkClientFrame(isBinary ? '\u0000' : raw.toString(), deps.settings.api);
        if (!check.ok) return sendError(new KeelError(check.code, check.message, check.field ? { field: check.field } : undefined), requestId);
        const frame = check.frame;
        nameFrameSpan(frame.type);
        if (frame.type === 'ping') return send({ type: 'pong', sessionId, data: {} });
        const context = frame.type === 'message' && frame.clientMessageId ? { clientMessageId: frame.clientMessageId } : frame.type === 'approval' ? { toolCallId: frame.toolCallId } : {};
        try {
          // Messages count against the session's limit (in sendMessage); other acting frames against the token's.
          if (frame.type !== 'message') await deps.limiter.requestByToken(caller.tokenKey);
          if (frame.type === 'message') await deps.sessions.sendMessage(caller, sessionId, frame.content, frame.clientMessageId, 'websocket', requestId);
          else if (frame.type === 'cancel') await deps.sessions.cancelTurn(caller, sessionId);
          else {
            const { toolCallId, approved, feedback, digest } = frame;
            const result = await deps.sessions.decideApproval(caller, sessionId, { toolCallId, approved, decidedBy: caller.userId, ...(feedback === undefined ? {} : { feedback }), ...(digest === undefined ? {} : { digest }) });
            send({ type: 'approval.accepted', sessionId, data: result });
          }
        } catch (error) {
          const e = toKeelError(error);
          if (e.code === 'INTERNAL_ERROR') deps.log.error({ err: error, sessionId, requestId }, 'websocket frame failed');
          sendError(e, requestId, context);
        }
      }));
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
    close: async () => {
      clearInterval(heartbeat);
      for (const ws of wss.clients) ws.close(1001, 'server shutting down');
      await new Promise<void>((resolve) => wss.close(() => resolve()));
    },
  };
}
