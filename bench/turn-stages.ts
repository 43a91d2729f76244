import { round, summarize } from './stats';

/**
 * Where a turn's time before the model request goes, from the info lines the API and the worker
 * log for every turn: the API's checks before it stores the message (session, busy policy), the
 * store (with the rate limit) and the signal, the activity's wait on its task queue (after the
 * workflow task that scheduled it), and the activity's own reads before the model request.
 */
const STAGES = {
  apiChecks: { msg: 'message accepted', field: 'checksMs' },
  apiStoreAndSignal: { msg: 'message accepted', field: 'signalMs' },
  activityScheduleToStart: { msg: 'model reply committed', field: 'scheduleToStartMs' },
  activityBeforeModelRequest: { msg: 'model reply committed', field: 'beforeRequestMs' },
} as const;
type Stage = keyof typeof STAGES;
const stages = Object.keys(STAGES) as Stage[];

/** p50 / p95 in ms of each stage over every turn the lines log (the loggers round to whole ms). */
export function turnStagesMs(lines: string[]): Record<Stage, { p50: number; p95: number; n: number }> {
  const values = new Map<Stage, number[]>(stages.map((s) => [s, []]));
  for (const line of lines) {
    if (!line.includes('"msg":"message accepted"') && !line.includes('"msg":"model reply committed"')) continue;
    const entry = JSON.parse(line) as Record<string, unknown>;
    for (const stage of stages) {
      const { msg, field } = STAGES[stage];
      const value = entry[field];
      if (entry.msg === msg && typeof value === 'number') values.get(stage)!.push(value);
    }
  }
  const summary = (v: number[]) => {
    const s = summarize(v);
    return { p50: round(s.p50), p95: round(s.p95), n: s.n };
  };
  return Object.fromEntries(stages.map((s) => [s, summary(values.get(s)!)])) as Record<Stage, { p50: number; p95: number; n: number }>;
}
