import { readdirSync, readFileSync } from 'node:fs';

/** CPU and memory of processes, from Linux /proc, for the benchmarks. */

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux). */
const TICKS_PER_S = 100;

interface ProcStat {
  ppid: number;
  /** utime + stime: the process's own CPU, in ticks. */
  own: number;
  /** cutime + cstime: CPU of its children that it has reaped, in ticks. */
  reaped: number;
}

function stat(pid: number): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), own: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]) };
  } catch {
    return undefined;
  }
}

/**
 * CPU seconds a process and all of its descendants have used so far: live descendants' own time
 * plus what the tree has reaped (PostgreSQL's backends come and go under the postmaster).
 */
export function treeCpuSeconds(root: number): number {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const s = stat(pid);
    if (!s) continue;
    const list = children.get(s.ppid) ?? [];
    list.push(pid);
    children.set(s.ppid, list);
  }
  let ticks = 0;
  const visit = (pid: number, isRoot: boolean) => {
    const s = stat(pid);
    if (!s) return;
    // A live child's reaped time is counted at the child; only the root's includes exited ones below it.
    ticks += s.own + (isRoot ? s.reaped : 0);
    for (const child of children.get(pid) ?? []) visit(child, false);
  };
  visit(root, true);
  return ticks / TICKS_PER_S;
}

/** CPU seconds of one process alone (its threads; not its children). */
export function ownCpuSeconds(pid: number): number {
  return (stat(pid)?.own ?? 0) / TICKS_PER_S;
}

/** A process to sample: alone, or (`tree`) with its descendants, as PostgreSQL's backends. */
export interface Sampled {
  pid: number;
  tree?: boolean;
}

/** CPU seconds of named processes, sampled now. */
export function sampleCpu(processes: Record<string, Sampled>): Record<string, number> {
  return Object.fromEntries(Object.entries(processes).map(([name, p]) => [name, p.tree ? treeCpuSeconds(p.pid) : ownCpuSeconds(p.pid)]));
}

/** CPU seconds used between two samples, per name. */
export function cpuBetween(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.keys(before).map((name) => [name, (after[name] ?? 0) - (before[name] ?? 0)]));
}

/** Resident memory of one process, in MiB (0 once it is gone). */
export function rssMb(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
  } catch {
    return 0;
  }
}

/** Proportional set size: shared pages split between the processes that map them. */
function pssMb(pid: number): number {
  try {
    return Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0) / 1024;
  } catch {
    return 0;
  }
}

/** Memory of a process and its children (PostgreSQL's backends), as PSS: shared buffers counted once, not in each backend. */
export function treePssMb(root: number): number {
  let total = pssMb(root);
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (Number.isInteger(pid) && stat(pid)?.ppid === root) total += pssMb(pid);
  }
  return total;
}
