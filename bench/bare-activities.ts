import { Context } from '@temporalio/activity';
import OpenAI from 'openai';

/** Wall-clock time in ms with sub-ms precision, comparable across processes on one machine. */
export const wallClockMs = () => performance.timeOrigin + performance.now();

export function createBareActivities(baseURL: string) {
  const openai = new OpenAI({ baseURL, apiKey: 'bench', maxRetries: 0 });
  return {
    /** Streams the model's reply; returns it with the wall-clock time its first content arrived. */
    async bareReply(content: string): Promise<{ reply: string; firstTokenAtMs: number }> {
      const stream = await openai.chat.completions.create({ model: 'keel-local', stream: true, messages: [{ role: 'user', content }] });
      let text = '';
      let firstTokenAtMs = NaN;
      for await (const chunk of stream) {
        Context.current().heartbeat();
        const delta = chunk.choices[0]?.delta?.content ?? '';
        if (delta && Number.isNaN(firstTokenAtMs)) firstTokenAtMs = wallClockMs();
        text += delta;
      }
      return { reply: text, firstTokenAtMs };
    },
  };
}
export type BareActivities = ReturnType<typeof createBareActivities>;
