import type OpenAI from 'openai';
import type { ModelToolCall } from '../../contracts/turn';

/** Joins streamed tool-call fragments by index, as the OpenAI stream sends them. */
export class ToolCallAssembler {
  private readonly calls: { id: string; name: string; arguments: string }[] = [];

  add(deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] | undefined): void {
    for (const d of deltas ?? []) {
      const call = (this.calls[d.index] ??= { id: '', name: '', arguments: '' });
      if (d.id) call.id = d.id;
      if (d.function?.name) call.name += d.function.name;
      if (d.function?.arguments) call.arguments += d.function.arguments;
    }
  }

  result(): ModelToolCall[] {
    return this.calls.filter(Boolean).map((c, i) => ({ modelCallId: c.id || `call_${i}`, name: c.name, arguments: c.arguments || '{}' }));
  }
}
