import { PassThrough } from 'node:stream';
import type { Context } from 'koa';

export interface SseWriter {
  send(frame: { event: string; data: unknown; id?: number }): void;
  comment(text: string): void;
  /** Bytes written that the client has not taken yet (stream and socket buffers). */
  backlog(): number;
  /**
   * Ends the stream after what is written. A client that has not taken it all within
   * END_GRACE_MS (a stalled reader) loses the connection instead, so its buffers are freed.
   */
  end(): void;
  onClose(fn: () => void): void;
  readonly closed: boolean;
}

/** As long as a WebSocket close handshake may take (the ws library's close timeout). */
const END_GRACE_MS = 30_000;

/** Switches the response to text/event-stream and returns a writer for it. */
export function openSse(ctx: Context): SseWriter {
  const stream = new PassThrough();
  ctx.req.socket.setTimeout(0);
  ctx.req.socket.setNoDelay(true);
  ctx.set({ 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache, no-transform', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
  ctx.status = 200;
  ctx.body = stream;
  // Headers go out with the first bytes: a comment now, so the client sees the stream open before the first event.
  stream.write(': open\n\n');
  const closers: (() => void)[] = [];
  let closed = false;
  let ending: NodeJS.Timeout | undefined;
  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(ending);
    closers.forEach((fn) => fn());
  };
  ctx.req.on('close', close);
  ctx.res.on('close', close);
  stream.on('close', close);
  const write = (text: string) => {
    if (!closed && !stream.writableEnded) stream.write(text);
  };
  return {
    send({ event, data, id }) {
      write(`${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    comment(text) {
      write(`: ${text}\n\n`);
    },
    backlog() {
      return stream.writableLength + stream.readableLength + ctx.res.writableLength;
    },
    end() {
      if (stream.writableEnded) return;
      stream.end();
      ending = setTimeout(() => ctx.req.socket.destroy(), END_GRACE_MS).unref();
      // The stream is over for its subscribers even while its last bytes drain.
      const fns = closers.splice(0);
      fns.forEach((fn) => fn());
    },
    onClose(fn) {
      closers.push(fn);
    },
    get closed() {
      return closed || stream.writableEnded;
    },
  };
}
