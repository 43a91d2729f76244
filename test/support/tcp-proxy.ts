import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy to a server (Postgres, by its URL) that can be taken down: `up` forwards, `down`
 * cuts every connection and refuses new ones, `unanswered` answers nothing any more, on open
 * connections or new ones, as happens when the database is partitioned away. close() stops it
 * listening and cuts every connection.
 */
export async function switchableProxy(target: URL) {
  const sockets = new Set<Socket>();
  const pairs = new Set<[Socket, Socket]>();
  let mode: 'up' | 'down' | 'unanswered' = 'up';
  const track = (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
  };
  const server: Server = createServer((client) => {
    if (mode === 'down') return void client.destroy();
    track(client);
    if (mode === 'unanswered') return;
    const upstream = connect(Number(target.port), target.hostname);
    track(upstream);
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    client.on('close', () => (upstream.destroy(), pairs.delete(pair)));
    upstream.on('close', () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(target);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as AddressInfo).port);
  const cutAll = () => [...sockets].forEach((s) => s.destroy());
  return {
    url: url.toString(),
    set(next: typeof mode) {
      mode = next;
      if (next === 'down') cutAll();
      if (next === 'unanswered') {
        for (const [client, upstream] of pairs) {
          client.unpipe(upstream);
          upstream.unpipe(client);
        }
      }
    },
    close: () => new Promise<void>((resolve) => (server.close(() => resolve()), cutAll())),
  };
}
