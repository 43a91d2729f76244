import { Context } from '@temporalio/activity';
import OpenAI from 'openai';

export function createBareActivities(baseURL: string) {
  const openai = new OpenAI({ baseURL, apiKey: 'bench', maxRetries: 0 });
  return {
    async bareReply(content: string): Promise<string> {
      const stream = await openai.chat.completions.create({ model: 'keel-local', stream: true, messages: [{ role: 'user', content }] });
      let text = '';
      for await (const chunk of stream) {
        Context.current().heartbeat();
        text += chunk.choices[0]?.delta?.content ?? '';
      }
      return text;
    },
  };
}
export type BareActivities = ReturnType<typeof createBareActivities>;
