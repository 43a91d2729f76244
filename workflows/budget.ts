import type { Budget } from '../contracts/agents';
import type { BudgetOverrun, Usage } from '../contracts/events';

/**
 * What one turn may still spend, and what it has spent: tokens and cost of its model calls, and
 * the tool calls the model made. A message's own limits (a run's) can only tighten the agent's:
 * each limit is the lower of the two. An approver's raise gives another allowance of the
 * original size, from what is spent.
 */
export class TurnBudget {
  private readonly spent = { tokens: 0, costUsd: 0, toolCalls: 0 };
  private pauses = 0;

  private constructor(
    private readonly limits: Budget,
    private readonly allowance: Budget,
  ) {}

  /** Null when neither the agent nor the message sets a limit: the turn runs as it always has. */
  static of(agent: Budget | undefined, message: Budget | undefined): TurnBudget | null {
    const lower = (a: number | undefined, b: number | undefined) => (a === undefined ? b : b === undefined ? a : Math.min(a, b));
    const limits: Budget = {};
    const tokens = lower(agent?.maxTokens, message?.maxTokens);
    const cost = lower(agent?.maxCostUsd, message?.maxCostUsd);
    const toolCalls = lower(agent?.maxToolCalls, message?.maxToolCalls);
    if (tokens !== undefined) limits.maxTokens = tokens;
    if (cost !== undefined) limits.maxCostUsd = cost;
    if (toolCalls !== undefined) limits.maxToolCalls = toolCalls;
    if (limits.maxTokens === undefined && limits.maxCostUsd === undefined && limits.maxToolCalls === undefined) return null;
    return new TurnBudget({ ...limits }, { ...limits });
  }

  addReply(usage: Usage): void {
    this.spent.tokens += usage.inputTokens + usage.outputTokens;
    this.spent.costUsd += usage.costUsd;
  }

  addToolCalls(count: number): void {
    this.spent.toolCalls += count;
  }

  /** The limits the turn is over, counting `plannedToolCalls` the model asks for now. */
  overruns(plannedToolCalls: number): BudgetOverrun[] {
    const over: BudgetOverrun[] = [];
    const { maxTokens, maxCostUsd, maxToolCalls } = this.limits;
    if (maxTokens !== undefined && this.spent.tokens > maxTokens) over.push({ limit: 'tokens', used: this.spent.tokens, max: maxTokens });
    if (maxCostUsd !== undefined && this.spent.costUsd > maxCostUsd) over.push({ limit: 'costUsd', used: this.spent.costUsd, max: maxCostUsd });
    const toolCalls = this.spent.toolCalls + plannedToolCalls;
    if (maxToolCalls !== undefined && toolCalls > maxToolCalls) over.push({ limit: 'toolCalls', used: toolCalls, max: maxToolCalls });
    return over;
  }

  /** An approver let the turn go on: each limit it was over becomes what it has used plus another allowance of the original size. */
  raise(overruns: BudgetOverrun[]): void {
    for (const o of overruns) {
      if (o.limit === 'tokens') this.limits.maxTokens = o.used + (this.allowance.maxTokens ?? 0);
      if (o.limit === 'costUsd') this.limits.maxCostUsd = o.used + (this.allowance.maxCostUsd ?? 0);
      if (o.limit === 'toolCalls') this.limits.maxToolCalls = o.used + (this.allowance.maxToolCalls ?? 0);
    }
  }

  nextPause(): number {
    return ++this.pauses;
  }
}
