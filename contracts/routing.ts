import { z } from 'zod';
import type { RouteOutcome } from './events';

/**
 * What a router's classifier must answer (structured output; docs/routers.md). The same schema
 * is sent to the model as its JSON schema and checked on the answer.
 */
export const ClassifierOutput = z.object({
  intents: z.array(
    z.object({
      /** A member agent's id, or HUMAN_AGENT when the user wants a person or no member can help. */
      agent: z.string(),
      confidence: z.number().min(0).max(1),
      reasoning: z.string(),
    }),
  ),
  isAmbiguous: z.boolean(),
  clarificationQuestion: z.string().nullable(),
});
export type ClassifierOutput = z.infer<typeof ClassifierOutput>;

/** The intent that sends the conversation to a person. */
export const HUMAN_AGENT = 'human';

export const DEFAULT_CLARIFICATION = 'Could you tell me a little more about what you need, so I can pass you to the right specialist?';
export const REPHRASE_REQUEST = 'Sorry, I could not work out what you need. Could you say it again in other words?';

export interface RouteChoice {
  outcome: RouteOutcome;
  chosen: string[];
  question?: string;
  reason?: string;
  clarification?: 'ambiguous' | 'low_confidence';
}

/**
 * The rules of a route, from the classifier's answer: a person when asked for with enough
 * confidence; a question when the classifier says it is ambiguous or no member reaches the
 * threshold; else every member at or above it, once each, in the order the classifier gave.
 */
export function chooseRoute(output: ClassifierOutput, members: string[], threshold: number): RouteChoice {
  const human = output.intents.find((i) => i.agent === HUMAN_AGENT && i.confidence >= threshold);
  if (human) return { outcome: 'escalate', chosen: [], reason: human.reasoning || 'The user asked for a person.' };
  const question = output.clarificationQuestion?.trim() || DEFAULT_CLARIFICATION;
  if (output.isAmbiguous) return { outcome: 'clarification', chosen: [], question, clarification: 'ambiguous' };
  const chosen: string[] = [];
  for (const intent of output.intents) {
    if (intent.confidence >= threshold && members.includes(intent.agent) && !chosen.includes(intent.agent)) chosen.push(intent.agent);
  }
  if (chosen.length === 0) return { outcome: 'clarification', chosen: [], question, clarification: 'low_confidence' };
  return { outcome: 'agents', chosen };
}
