import { randomUUID } from 'node:crypto';
import { WebSocket, type RawData } from 'ws';
import { checkClientFrame } from '../contracts/frames';
import { KeelError } from '../contracts/errors';
import type { Caller } from './auth';
import type { ApiDeps } from './deps';

/** The per-user socket (docs/presence.md): approvals and status changes of all the caller's sessions. */
export const USER_WS_PATH = '/api/v1/ws';

export interface UserSocketCloseCodes {
  shuttingDown: number;
  streamFailed: number;
  tooSlow: number;
  unauthorized: number;
}

/**
 * Serves one per-user socket: `connected`, then the caller's sessions' approval.required,
 * approval.resolved, session.escalated, session.handed_back, turn.done and agent.status frames
 * (every session for an admin), live only. It answers `ping`; any other frame gets an error frame.
 * A client that does not read is cut off at once (1013 CONSUMER_TOO_SLOW): with no log to
 * catch up from, holding back would lose frames without saying so.
 */
export function serveUserSocket(ws: WebSocket, caller: Caller, deps: ApiDeps, close: UserSocketCloseCodes): void {
  const limits = deps.settings.api;
  const send = (frame: unknown) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
  };
  const closeWith = (code: number, reason: string, error: KeelError) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    deps.log.warn({ userId: caller.userId, code: error.code, closeCode: code }, 'user socket closed by the server');
    deps.metrics.errors.inc({ code: error.code });
    send({ type: 'error', data: error.toBody(randomUUID()) });
    ws.close(code, reason);
  };
  const sendError = (error: KeelError) => {
    deps.metrics.errors.inc({ code: error.code });
    send({ type: 'error', data: error.toBody(randomUUID()) });
  };

  deps.metrics.openWebSockets.inc();
  const unregister = deps.connections.add({
    kind: 'websocket',
    userId: caller.userId,
    tokenKey: caller.tokenKey,
    end: (reason) =>
      reason === 'revoked' ? closeWith(close.unauthorized, 'token revoked', new KeelError('UNAUTHORIZED', 'The token is no longer valid')) : ws.close(close.shuttingDown, 'server shutting down'),
  });
  send({ type: 'connected', data: { userId: caller.userId, admin: caller.isAdmin } });
  const leave = deps.userFeed.add({
    userId: caller.userId,
    admin: caller.isAdmin,
    frame: (frame) => {
      if (ws.bufferedAmount > limits.maxBufferedBytes) {
        return closeWith(close.tooSlow, 'client too slow; reconnect', new KeelError('CONSUMER_TOO_SLOW', 'The connection fell too far behind; reconnect and re-read GET /api/v1/approvals?status=pending'));
      }
      send(frame);
    },
    lost: () => closeWith(close.streamFailed, 'events may have been missed; reconnect', new KeelError('SERVICE_UNAVAILABLE', 'Events may have been missed; reconnect and re-read GET /api/v1/approvals?status=pending')),
  });

  let closed = false;
  const onClosed = () => {
    if (closed) return;
    closed = true;
    deps.metrics.openWebSockets.dec();
    unregister();
    leave();
  };
  ws.on('close', onClosed);
  ws.on('error', onClosed);

  ws.on('message', (raw: RawData, isBinary: boolean) => {
    const check = checkClientFrame(isBinary ? '\u0000' : raw.toString(), limits);
    if (!check.ok) return sendError(new KeelError(check.code, check.message, check.field ? { field: check.field } : undefined));
    if (check.frame.type === 'ping') return send({ type: 'pong', data: {} });
    sendError(new KeelError('UNKNOWN_FRAME_TYPE', 'The user socket takes ping frames only; send the others on the session socket', { field: 'type' }));
  });
}
