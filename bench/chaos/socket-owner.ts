import { readdir, readFile, readlink } from 'node:fs/promises';

/**
 * Which of `pids` holds the loopback TCP connection whose local port is `localPort` and whose peer
 * listens on `peerPort` (Linux /proc): the process that sent a request the chaos service holds.
 */
export async function pidOwningConnection(localPort: number, peerPort: number, pids: number[]): Promise<number | undefined> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10) continue;
      const port = (address: string) => parseInt(address.split(':').pop()!, 16);
      if (port(cols[1]!) === localPort && port(cols[2]!) === peerPort) inodes.add(cols[9]!);
    }
  }
  if (inodes.size === 0) return undefined;
  for (const pid of pids) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m && inodes.has(m[1]!)) return pid;
    }
  }
  return undefined;
}
