import http from 'node:http';

export interface SseEvent {
  event: string;
  id?: number;
  data: any;
}

/** A raw SSE client over node:http: records every event, can stop reading (to play a stalled reader), and can wait for an event. */
export class SseClient {
  readonly events: SseEvent[] = [];
  /** Resolves when the server ends the response (or the connection drops). */
  readonly ended: Promise<void>;
  private buffer = '';
  private waiters: { pred: (e: SseEvent) => boolean; resolve: (e: SseEvent) => void }[] = [];

  private constructor(
    private readonly req: http.ClientRequest,
    readonly res: http.IncomingMessage,
  ) {
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => this.receive(chunk));
    this.ended = new Promise((resolve) => {
      res.once('end', () => resolve());
      res.once('close', () => resolve());
      res.once('error', () => resolve());
    });
  }

  /** Opens `url`; a response other than 200 text/event-stream rejects with its status and body. */
  static open(url: string, opts: { token?: string; method?: string; body?: unknown; headers?: Record<string, string> } = {}): Promise<SseClient> {
    return new Promise((resolve, reject) => {
      const body = opts.body === undefined ? undefined : JSON.stringify(opts.body);
      const req = http.request(url, {
        method: opts.method ?? 'GET',
        headers: {
          ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...opts.headers,
        },
      });
      req.once('error', reject);
      req.once('response', (res) => {
        if (res.statusCode !== 200 || !String(res.headers['content-type']).startsWith('text/event-stream')) {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => reject(Object.assign(new Error(`SSE refused: ${res.statusCode} ${text}`), { status: res.statusCode, body: safeJson(text) })));
          return;
        }
        resolve(new SseClient(req, res));
      });
      req.end(body);
    });
  }

  /** Stops reading: the server's writes back up into its buffers. */
  pause(): void {
    this.res.pause();
  }

  resume(): void {
    this.res.resume();
  }

  waitFor(pred: (e: SseEvent) => boolean, timeoutMs = 20_000): Promise<SseEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching SSE event within ${timeoutMs} ms; got ${this.events.map((e) => e.event).join(',')}`)), timeoutMs);
      this.waiters.push({ pred, resolve: (e) => (clearTimeout(timer), resolve(e)) });
    });
  }

  close(): void {
    this.req.destroy();
  }

  private receive(chunk: string): void {
    this.buffer += chunk;
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const event: Partial<SseEvent> & { lines: string[] } = { lines: [] };
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const [field, ...rest] = line.split(': ');
        const value = rest.join(': ');
        if (field === 'event') event.event = value;
        else if (field === 'id') event.id = Number(value);
        else if (field === 'data') event.lines.push(value);
      }
      if (!event.event) continue;
      const parsed: SseEvent = { event: event.event, data: safeJson(event.lines.join('\n')), ...(event.id === undefined ? {} : { id: event.id }) };
      this.events.push(parsed);
      for (const w of [...this.waiters]) {
        if (w.pred(parsed)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    }
  }
}

function safeJson(text: string): any {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
