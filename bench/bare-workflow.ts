import { condition, defineUpdate, proxyActivities, setHandler } from '@temporalio/workflow';
import type { BareActivities } from './bare-activities';

export const bareTurn = defineUpdate<{ reply: string; firstTokenAtMs: number }, [string]>('bareTurn');

const { bareReply } = proxyActivities<BareActivities>({ startToCloseTimeout: '1 minute', heartbeatTimeout: '10 seconds' });

/** The baseline: take a message, run one model activity, record the result. No bridge, no database. */
export async function bareSession(): Promise<number> {
  let replies = 0;
  setHandler(bareTurn, async (content) => {
    const result = await bareReply(content);
    replies++;
    return result;
  });
  // Runs until the bench's server is stopped.
  await condition(() => false);
  return replies;
}
