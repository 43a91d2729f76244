import type { WorkflowHandle } from '@temporalio/client';
import type { SignalDefinition, UpdateDefinition } from '@temporalio/common';
import { CancelTurnRequest, CancelTurnResult, UserMessageSignal } from '../contracts/session';
import { StreamReplyInput, StreamReplyResult, ToolPolicy } from '../contracts/turn';
import { cancelTurnUpdate, userMessageSignal } from '../contracts/workflow-messages';
import type { SessionActivityDoubles } from './support/workflow-harness';

/**
 * The workflow–activity contract, checked twice: at compile time (`npx tsc --noEmit -p .`), where
 * each `@ts-expect-error` must meet an error or is itself one, and at run time, where the zod
 * schema the activities parse with meets the same bad values.
 */

type Equal<X, Y> = (<T>() => T extends X ? 1 : 2) extends <T>() => T extends Y ? 1 : 2 ? true : false;
type SignalPayload<D> = D extends SignalDefinition<[infer P]> ? P : never;
type UpdateArgs<D> = D extends UpdateDefinition<any, infer A> ? A : never;
type UpdateResult<D> = D extends UpdateDefinition<infer R, any> ? R : never;

// ---------------------------------------------------------------------------------------------
// The values, good and bad. Each bad one is a compile error here and a parse failure below.
// ---------------------------------------------------------------------------------------------

const goodSignal: SignalPayload<typeof userMessageSignal> = { messageId: 'm1', clientMessageId: 'c1', requestId: 'r1' };
// @ts-expect-error a user message signal carries IDs only: the content is in Postgres
const signalWithContent: SignalPayload<typeof userMessageSignal> = { messageId: 'm1', content: 'Where is order 7?' };
// @ts-expect-error the message ID is required
const signalWithoutId: SignalPayload<typeof userMessageSignal> = { clientMessageId: 'c1' };

const goodStreamReply: StreamReplyInput = {
  sessionId: 's1',
  turn: 1,
  step: 1,
  replyTo: 'm1',
  accept: [{ messageId: 'm1', turn: 1 }],
  agent: { id: 'orders', version: 2 },
  model: 'test-model',
};
const { agent: _agent, ...withoutAgent } = goodStreamReply;
// @ts-expect-error the agent version whose prompt and tools the model gets is required
const streamReplyWithoutAgent: StreamReplyInput = withoutAgent;
// @ts-expect-error the workflow never carries message content to the activity
const streamReplyWithContent: StreamReplyInput = { ...goodStreamReply, content: 'Where is order 7?' };
// @ts-expect-error an agent without its version is not an agent version
const streamReplyWithUnversionedAgent: StreamReplyInput = { ...goodStreamReply, agent: { id: 'orders' } };

const goodPolicy: ToolPolicy = { name: 'lookup_order', permission: 'read', requiresApproval: false, approvalTtlMs: 60_000, timeoutMs: 5_000, maxAttempts: 2 };
const { timeoutMs: _timeoutMs, ...policyWithoutTimeout } = goodPolicy;
const { maxAttempts: _maxAttempts, ...policyWithoutAttempts } = goodPolicy;
// @ts-expect-error a policy must say how long one execution may take
const policyMissingTimeout: ToolPolicy = policyWithoutTimeout;
// @ts-expect-error a policy must say how many attempts a call gets
const policyMissingAttempts: ToolPolicy = policyWithoutAttempts;

const goodCancel: UpdateArgs<typeof cancelTurnUpdate>[0] = { requestedBy: 'user-1' };
const goodCancelOfTurn: UpdateArgs<typeof cancelTurnUpdate>[0] = { turn: 3, requestedBy: 'user-1' };
// @ts-expect-error a cancel names who asked for it
const cancelWithoutRequester: UpdateArgs<typeof cancelTurnUpdate>[0] = { turn: 3 };
// @ts-expect-error the turn is a number
const cancelWithTextTurn: UpdateArgs<typeof cancelTurnUpdate>[0] = { turn: '3', requestedBy: 'user-1' };

const goodCancelResult: UpdateResult<typeof cancelTurnUpdate> = { cancelled: false, turn: null };
// @ts-expect-error the result says which turn, null when none ran
const cancelResultWithoutTurn: UpdateResult<typeof cancelTurnUpdate> = { cancelled: true };
// @ts-expect-error the result says whether the cancel is what ended the turn
const cancelResultWithoutCancelled: UpdateResult<typeof cancelTurnUpdate> = { turn: 3 };

const goodReply: StreamReplyResult = { messageId: 's1-t1-r1', finishReason: 'stop', usage: { inputTokens: 1, outputTokens: 2, costUsd: 0 }, toolCalls: [] };
const goodDouble: Pick<SessionActivityDoubles, 'streamReply'> = { streamReply: async (input) => ({ ...goodReply, messageId: `${input.sessionId}-t${input.turn}-r${input.step}` }) };
// @ts-expect-error a streamReply double must return the whole StreamReplyResult: usage and toolCalls are missing
const doubleMissingFields: Pick<SessionActivityDoubles, 'streamReply'> = { streamReply: async () => ({ messageId: 'm', finishReason: 'stop' }) };
// @ts-expect-error a tool call from a streamReply double must have the model's call ID
const doubleWithBadToolCall: Pick<SessionActivityDoubles, 'streamReply'> = { streamReply: async () => ({ ...goodReply, toolCalls: [{ name: 'lookup_order', arguments: '{}' }] }) };

// ---------------------------------------------------------------------------------------------
// Compile time only: the definitions as the API and the workflow use them. Never called.
// ---------------------------------------------------------------------------------------------

const _exactCancelResult: Equal<UpdateResult<typeof cancelTurnUpdate>, { cancelled: boolean; turn: number | null }> = true;
const _exactCancelArgs: Equal<UpdateArgs<typeof cancelTurnUpdate>, [{ turn?: number | undefined; requestedBy: string }]> = true;
// @ts-expect-error the result is not just a boolean flag
const _notJustAFlag: Equal<UpdateResult<typeof cancelTurnUpdate>, { cancelled: boolean }> = true;
const _exactSignal: Equal<
  SignalPayload<typeof userMessageSignal>,
  { messageId: string; clientMessageId?: string | undefined; requestId?: string | undefined; budget?: { maxTokens?: number | undefined; maxCostUsd?: number | undefined; maxToolCalls?: number | undefined } | undefined }
> = true;

async function _throughTheClient(handle: WorkflowHandle): Promise<void> {
  await handle.signal(userMessageSignal, { messageId: 'm1' });
  // @ts-expect-error the client refuses a signal that carries content
  await handle.signal(userMessageSignal, { messageId: 'm1', content: 'Where is order 7?' });
  const _result = await handle.executeUpdate(cancelTurnUpdate, { args: [{ requestedBy: 'user-1' }] });
  const _typed: Equal<typeof _result, { cancelled: boolean; turn: number | null }> = true;
  // @ts-expect-error the update needs who asked
  await handle.executeUpdate(cancelTurnUpdate, { args: [{ turn: 2 }] });
}

// ---------------------------------------------------------------------------------------------
// Run time: the zod schemas meet the same values.
// ---------------------------------------------------------------------------------------------

describe('the contract at run time', () => {
  test('a user message signal: IDs pass; without an ID it is refused; content never gets through', () => {
    expect(UserMessageSignal.parse(goodSignal)).toEqual({ messageId: 'm1', clientMessageId: 'c1', requestId: 'r1' });
    expect(UserMessageSignal.safeParse(signalWithoutId).success).toBe(false);
    // The schema strips unknown keys (it does not reject them): what parses has no content.
    const parsed = UserMessageSignal.safeParse(signalWithContent);
    expect(parsed.success ? parsed.data : 'rejected').not.toHaveProperty('content');
  });

  test('StreamReplyInput: without the agent, or with an unversioned one, it is refused; content never gets through', () => {
    expect(StreamReplyInput.parse(goodStreamReply)).toEqual(goodStreamReply);
    expect(StreamReplyInput.safeParse(streamReplyWithoutAgent).success).toBe(false);
    expect(StreamReplyInput.safeParse(streamReplyWithUnversionedAgent).success).toBe(false);
    const parsed = StreamReplyInput.safeParse(streamReplyWithContent);
    expect(parsed.success ? parsed.data : 'rejected').not.toHaveProperty('content');
  });

  test('ToolPolicy needs timeoutMs and maxAttempts, both positive integers', () => {
    expect(ToolPolicy.parse(goodPolicy)).toEqual(goodPolicy);
    expect(ToolPolicy.safeParse(policyMissingTimeout).success).toBe(false);
    expect(ToolPolicy.safeParse(policyMissingAttempts).success).toBe(false);
    expect(ToolPolicy.safeParse({ ...goodPolicy, timeoutMs: 0 }).success).toBe(false);
    expect(ToolPolicy.safeParse({ ...goodPolicy, maxAttempts: 1.5 }).success).toBe(false);
  });

  test('the cancel update takes {turn?, requestedBy} and returns {cancelled, turn}', () => {
    expect(cancelTurnUpdate.name).toBe('cancelTurn');
    expect(CancelTurnRequest.parse(goodCancel)).toEqual({ requestedBy: 'user-1' });
    expect(CancelTurnRequest.parse(goodCancelOfTurn)).toEqual({ turn: 3, requestedBy: 'user-1' });
    expect(CancelTurnRequest.safeParse(cancelWithoutRequester).success).toBe(false);
    expect(CancelTurnRequest.safeParse(cancelWithTextTurn).success).toBe(false);
    expect(CancelTurnRequest.safeParse({ turn: 0, requestedBy: 'user-1' }).success).toBe(false);
    expect(CancelTurnResult.parse(goodCancelResult)).toEqual({ cancelled: false, turn: null });
    expect(CancelTurnResult.parse({ cancelled: true, turn: 3 })).toEqual({ cancelled: true, turn: 3 });
    expect(CancelTurnResult.safeParse(cancelResultWithoutTurn).success).toBe(false);
    expect(CancelTurnResult.safeParse(cancelResultWithoutCancelled).success).toBe(false);
  });

  test("a streamReply double's result is checked by StreamReplyResult: the right shape passes, the wrong ones do not", async () => {
    expect(StreamReplyResult.parse(await goodDouble.streamReply(goodStreamReply))).toEqual({
      messageId: 's1-t1-r1',
      finishReason: 'stop',
      usage: { inputTokens: 1, outputTokens: 2, costUsd: 0 },
      toolCalls: [],
    });
    expect(StreamReplyResult.safeParse(await doubleMissingFields.streamReply(goodStreamReply)).success).toBe(false);
    expect(StreamReplyResult.safeParse(await doubleWithBadToolCall.streamReply(goodStreamReply)).success).toBe(false);
  });
});
