import { PassThrough } from 'node:stream';
import type { Context } from 'koa';

export interface SseWriter {
  send(frame: { event: string; data: unknown; id?: number }): void;
  comment(text: string): void;
  end(): void;
  onClose(fn: () => void): void;
}

/** Switches the response to text/event-stream and returns a writer for it. */
export function openSse(ctx: Context): SseWriter {
  const stream = new PassThrough();
  ctx.req.socket.setTimeout(0);
  ctx.req.socket.setNoDelay(true);
  ctx.set({ 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache, no-transform', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
  ctx.status = 200;
  ctx.body = stream;
  const closers: (() => void)[] = [];
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    closers.forEach((fn) => fn());
  };
  ctx.req.on('close', close);
  stream.on('close', close);
  return {
    send({ event, data, id }) {
      if (closed) return;
      stream.write(`${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    comment(text) {
      if (!closed) stream.write(`: ${text}\n\n`);
    },
    end() {
      stream.end();
      close();
    },
    onClose(fn) {
      closers.push(fn);
    },
  };
}
