import { CancellationScope } from '@temporalio/workflow';
import type { SessionAgent } from '../contracts/session';
import type { MessageRef } from '../contracts/turn';
import { agentSteps, escalateConversation, type TurnContext } from './turn';

const ref = (agent: SessionAgent) => ({ id: agent.id, version: agent.version });

/**
 * A router session's turn (docs/routers.md): the message is classified once (route.decided is
 * written once whatever retries), then the chosen members answer in order, each reading the
 * conversation so far. A member may hand off to another (it takes the rest of that member's part,
 * with the whole context) or escalate to a person. When an action of one member is rejected or
 * expires, the members still to come are skipped and the user is told.
 */
export async function routedSteps(ctx: TurnContext, accept: MessageRef[]): Promise<void> {
  const { state, acts, message } = ctx;
  const router = state.config.router!;
  const self = state.config.agent;
  const decision = await acts.routeMessage({
    sessionId: state.sessionId,
    ...(message.requestId ? { requestId: message.requestId } : {}),
    turn: message.turn,
    replyTo: message.messageId,
    accept,
    router: ref(self),
    members: router.members.map(ref),
    threshold: router.threshold,
    model: self.model,
  });
  state.markAccepted(accept);
  ctx.acceptedByReply = true;
  state.addUsage(decision.usage);
  ctx.budget?.addReply(decision.usage);
  if (decision.outcome === 'clarification' || decision.outcome === 'rephrase') return;
  if (decision.outcome === 'escalate') {
    await escalateConversation(ctx, { source: 'classifier', reason: decision.reason ?? 'The user asked for a person.', agent: null, endsTurn: true });
    return;
  }

  const queue = decision.chosen.map((id) => router.members.find((m) => m.id === id)).filter((m): m is SessionAgent => m !== undefined);
  let index = 0;
  let handoffs = 0;
  let handoff: { from: string; reason: string; toolCallId: string } | undefined;
  while (queue.length > 0) {
    const member = queue.shift()!;
    index += 1;
    await CancellationScope.nonCancellable(() =>
      acts.startAgent({ sessionId: state.sessionId, turn: message.turn, index, agent: ref(member), ...(handoff ? { handoff } : {}) }),
    );
    handoff = undefined;
    const greet = member.greets === true && !state.hasGreeted(member.id);
    const handoffTo = handoffs < router.maxHandoffs ? router.members.filter((m) => m.id !== member.id) : [];
    const end = await agentSteps(ctx, member, [], { member: true, continues: queue.length > 0, greet, handoffTo });
    if (end?.kind === 'handoff') {
      const next = router.members.find((m) => m.id === end.to)!;
      handoffs += 1;
      // The agent handed to takes over its own intent too, if the route had it later in the turn.
      const later = queue.indexOf(next);
      if (later >= 0) queue.splice(later, 1);
      queue.unshift(next);
      handoff = { from: member.id, reason: end.reason, toolCallId: end.toolCallId };
      continue;
    }
    if (end?.kind === 'escalate') {
      await escalateConversation(ctx, { source: end.source, reason: end.reason, agent: member, endsTurn: true });
      return;
    }
    if (ctx.refused && queue.length > 0) {
      await CancellationScope.nonCancellable(() =>
        acts.closeTurn({
          sessionId: state.sessionId,
          turn: message.turn,
          replyTo: message.messageId,
          accept: [],
          why: { kind: 'skipped', agents: queue.map((m) => m.id), outcome: ctx.refused!, afterStep: ctx.step },
        }),
      );
      return;
    }
  }
}
