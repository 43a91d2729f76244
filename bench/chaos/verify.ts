/**
 * The chaos run's verdict, a pure function of what was recorded: the database's events, messages
 * and tool calls per session, what each client sent and received, what the approver was told and
 * what the receiving service counted. test/chaos.test.ts feeds it doctored records to show it fails.
 */

export interface StoredEvent {
  seq: number;
  type: string;
  data: Record<string, any>;
}

export interface StoredMessage {
  id: string;
  turn: number | null;
  role: string;
  clientMessageId: string | null;
  /** An assistant message that asked for tools (not a reply to the user). */
  hasToolCalls: boolean;
}

export interface StoredToolCall {
  id: string;
  name: string;
  status: string;
  approvalOutcome: string | null;
}

export interface SentMessage {
  clientMessageId: string;
  /** The client saw it accepted (a 202, or its `message.accepted` event). */
  acknowledged: boolean;
  /** How many times it was sent (the first send and every resend). */
  sends: number;
}

export interface SessionRecord {
  id: string;
  sent: SentMessage[];
  events: StoredEvent[];
  messages: StoredMessage[];
  toolCalls: StoredToolCall[];
  /** Durable seqs as the session's clients received them, across every reconnect, in order. */
  delivered: number[];
}

/** One background run as its client saw it: every run ID its key was answered with, and how it ended. */
export interface RunRecord {
  key: string;
  sessionId: string | null;
  runIds: string[];
  /** 202 answers that said `created: true`. */
  created: number;
  submits: number;
  /** Answers that were neither a 202 nor a 5xx. */
  refusals: string[];
  /** The final status the client read; null if it never saw one. */
  status: string | null;
}

/** A worker killed while the service held the answer to one of its writes. */
export interface WriteKill {
  key: string;
}

export interface ChaosRecord {
  sessions: SessionRecord[];
  runs: RunRecord[];
  /** Webhook deliveries the receiver saw, by X-Keel-Delivery. */
  deliveries: { deliveryId: string; runId: string; attempts: number; statuses: string[]; badSignatures: number }[];
  writeKills: WriteKill[];
  /** The write tool's name: its succeeded calls must each have reached the service once. */
  writeTool: string;
  /** Every idempotency key the receiving service saw, with the action marker its body carried. */
  serviceEffects: { key: string; marker: string; requests: number }[];
  /** What the scripted approver heard back, per tool call. */
  decisions: { toolCallId: string; accepted: number; refusedAsDecided: number }[];
}

export interface Verdict {
  turns: number;
  lost: number;
  duplicated: number;
  duplicatedEffects: number;
  failedTurns: number;
  /** Tool-call effects at the service (distinct keys) and requests that carried a key seen before. */
  effects: number;
  repeatedRequests: number;
  approvals: number;
  runs: number;
  failedRuns: number;
  /** Webhook attempts beyond the first of a delivery (a lost 2xx, a retry). */
  repeatedWebhookAttempts: number;
  /**
   * Kills between a write's request and its receipt (distinct writes) whose write was sent again
   * under its key and succeeded; that it took effect once is the duplicated-effects rule's.
   */
  writeKillsLanded: number;
  /** One line per finding; empty when the run is clean. */
  problems: string[];
}

function countBy<T>(items: T[], key: (item: T) => string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const item of items) {
    const k = key(item);
    if (k !== undefined) out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

export function idempotencyKeyOf(sessionId: string, toolCallId: string): string {
  return `session-${sessionId}:${toolCallId}`;
}

export function verify(record: ChaosRecord): Verdict {
  const v: Verdict = {
    turns: 0,
    lost: 0,
    duplicated: 0,
    duplicatedEffects: 0,
    failedTurns: 0,
    effects: 0,
    repeatedRequests: 0,
    approvals: 0,
    runs: 0,
    failedRuns: 0,
    repeatedWebhookAttempts: 0,
    writeKillsLanded: 0,
    problems: [],
  };
  const lost = (what: string) => (v.lost++, v.problems.push(`LOST ${what}`));
  const dup = (what: string) => (v.duplicated++, v.problems.push(`DUPLICATED ${what}`));
  const serviceKeys = new Set(record.serviceEffects.map((e) => e.key));
  const runMessages = runMessagesBySession(record, lost);

  for (const s of record.sessions) {
    const at = `session ${s.id}`;
    const sentMessages = [...s.sent, ...(runMessages.get(s.id) ?? [])];
    // seq gap-free and unique.
    const stored = countBy(s.events, (e) => String(e.seq));
    const maxSeq = Math.max(0, ...s.events.map((e) => e.seq));
    for (let seq = 1; seq <= maxSeq; seq++) if (!stored.has(String(seq))) lost(`${at}: seq ${seq} missing from the event log`);
    for (const [seq, n] of stored) if (n > 1) dup(`${at}: seq ${seq} stored ${n} times`);

    const of = (type: string) => s.events.filter((e) => e.type === type);
    const accepted = of('message.accepted');
    const acceptedByClientId = countBy(accepted, (e) => e.data.clientMessageId as string | undefined);
    const turnsDone = countBy(of('turn.done'), (e) => String(e.data.turn));
    const doneByTurn = new Map(of('turn.done').map((e) => [Number(e.data.turn), e]));

    for (const sent of sentMessages) {
      const n = acceptedByClientId.get(sent.clientMessageId) ?? 0;
      if (n > 1) dup(`${at}: message ${sent.clientMessageId} accepted ${n} times`);
      if (n === 0) {
        lost(`${at}: message ${sent.clientMessageId} ${sent.acknowledged ? 'was acknowledged but' : 'was sent ' + sent.sends + ' times and'} never accepted`);
        continue;
      }
      const event = accepted.find((e) => e.data.clientMessageId === sent.clientMessageId)!;
      const turn = Number(event.data.turn);
      v.turns++;
      const done = turnsDone.get(String(turn)) ?? 0;
      if (done === 0) lost(`${at}: turn ${turn} (message ${sent.clientMessageId}) has no turn.done`);
      if (done > 1) dup(`${at}: turn ${turn} has ${done} turn.done events`);
      const final = doneByTurn.get(turn);
      if (final && final.data.replyTo !== event.data.messageId) lost(`${at}: turn ${turn}'s turn.done answers ${String(final.data.replyTo)}, not ${String(event.data.messageId)}`);
      if (final && final.data.status !== 'completed') {
        v.failedTurns++;
        v.problems.push(`note ${at}: turn ${turn} ended ${String(final.data.status)}`);
      }
      const replies = s.messages.filter((m) => m.turn === turn && m.role === 'assistant' && !m.hasToolCalls).length;
      if (replies > 1) dup(`${at}: turn ${turn} has ${replies} assistant replies`);
      if (replies === 0 && final?.data.status === 'completed') lost(`${at}: turn ${turn} completed with no stored assistant reply`);
      const users = s.messages.filter((m) => m.role === 'user' && m.clientMessageId === sent.clientMessageId).length;
      if (users > 1) dup(`${at}: message ${sent.clientMessageId} stored ${users} times`);
    }
    // Turns nobody sent (a message accepted twice under new IDs would show up here).
    const sentIds = new Set(sentMessages.map((m) => m.clientMessageId));
    for (const e of accepted) if (!sentIds.has(e.data.clientMessageId as string)) dup(`${at}: message.accepted for unsent ${String(e.data.clientMessageId)}`);

    for (const [streamId, n] of countBy(of('stream.end'), (e) => e.data.streamId as string)) if (n > 1) dup(`${at}: stream ${streamId} ended ${n} times`);
    for (const [id, n] of countBy(of('tool.result'), (e) => e.data.toolCallId as string)) if (n > 1) dup(`${at}: tool call ${id} has ${n} results`);

    // Approvals: each asked once, decided once.
    const resolved = countBy(of('approval.resolved'), (e) => e.data.toolCallId as string);
    for (const required of of('approval.required')) {
      const id = required.data.toolCallId as string;
      v.approvals++;
      const n = resolved.get(id) ?? 0;
      if (n === 0) lost(`${at}: approval ${id} never resolved`);
      if (n > 1) dup(`${at}: approval ${id} resolved ${n} times`);
    }

    // Every succeeded write reached the service.
    for (const call of s.toolCalls) {
      if (call.name === record.writeTool && call.status === 'succeeded' && !serviceKeys.has(idempotencyKeyOf(s.id, call.id))) {
        lost(`${at}: write ${call.id} succeeded but the service never saw its key`);
      }
    }

    // The clients' view: every event up to the last one they saw, each once.
    const deliveredCounts = countBy(s.delivered, (seq) => String(seq));
    for (const [seq, n] of deliveredCounts) if (n > 1) dup(`${at}: seq ${seq} delivered ${n} times to the client`);
    const highest = Math.max(0, ...s.delivered);
    for (let seq = 1; seq <= highest; seq++) if (!deliveredCounts.has(String(seq))) lost(`${at}: seq ${seq} never delivered to the client`);
  }

  // Effects: one per key by construction of the service; one key per intended action.
  v.effects = record.serviceEffects.length;
  for (const e of record.serviceEffects) v.repeatedRequests += e.requests - 1;
  for (const [marker, n] of countBy(record.serviceEffects, (e) => e.marker)) {
    if (n > 1) {
      v.duplicatedEffects += n - 1;
      v.problems.push(`DUPLICATED EFFECT action ${marker} reached the service under ${n} idempotency keys`);
    }
  }
  for (const d of record.decisions) {
    if (d.accepted > 1) dup(`approval ${d.toolCallId} accepted ${d.accepted} times by the API`);
  }
  verifyRuns(record, v, lost, dup);
  verifyWriteKills(record, v, lost);
  return v;
}

/** Runs: one run per key, each ended, and its webhook delivered under one delivery ID, signed, with the status it ended in. */
function verifyRuns(record: ChaosRecord, v: Verdict, lost: (what: string) => void, dup: (what: string) => void): void {
  const deliveries = new Map(record.deliveries.map((d) => [d.deliveryId, d]));
  for (const d of record.deliveries) {
    if (d.badSignatures > 0) lost(`webhook ${d.deliveryId}: ${d.badSignatures} attempts with a bad signature`);
    v.repeatedWebhookAttempts += d.attempts - 1;
  }
  const deliveriesByRun = countBy(record.deliveries, (d) => d.runId);
  for (const r of record.runs) {
    const at = `run key ${r.key}`;
    if (r.runIds.length === 0) {
      lost(`${at} was never answered with a run (${r.submits} submits${r.refusals.length ? `; ${r.refusals.join('; ')}` : ''})`);
      continue;
    }
    v.runs++;
    // Every submit of a key carries the same request: once one got its run, a refusal is a wrong answer.
    if (r.refusals.length > 0) lost(`${at} was answered with a run and also refused: ${r.refusals.join('; ')}`);
    if (r.runIds.length > 1) dup(`${at} was answered with ${r.runIds.length} runs: ${r.runIds.join(', ')}`);
    // created: true at most once; none is no loss (the answer that said it can be the one a kill cut off).
    if (r.created > 1) dup(`${at} was answered created: true ${r.created} times`);
    const runId = r.runIds[0]!;
    if (r.status === null) {
      lost(`${at} (run ${runId}) never ended`);
      continue;
    }
    if (r.status !== 'done') {
      v.failedRuns++;
      v.problems.push(`note ${at}: run ${runId} ended ${r.status}`);
    }
    const delivery = deliveries.get(`webhook-run-${runId}`);
    if (!delivery) lost(`${at}: run ${runId} ended ${r.status} and its webhook never came`);
    else if (delivery.statuses.some((s) => s !== r.status)) lost(`${at}: run ${runId} ended ${r.status}, its webhook said ${delivery.statuses.join(', ')}`);
    if ((deliveriesByRun.get(runId) ?? 0) > 1) dup(`${at}: run ${runId} has ${deliveriesByRun.get(runId)} webhook deliveries`);
  }
}

function verifyWriteKills(record: ChaosRecord, v: Verdict, lost: (what: string) => void): void {
  const effects = new Map(record.serviceEffects.map((e) => [e.key, e]));
  const calls = new Map(record.sessions.flatMap((s) => s.toolCalls.map((c) => [idempotencyKeyOf(s.id, c.id), c] as const)));
  for (const key of new Set(record.writeKills.map((k) => k.key))) {
    const requests = effects.get(key)?.requests ?? 0;
    const call = calls.get(key);
    // Its worker died before the receipt: only a later request can have told a worker it succeeded.
    if (!call) lost(`the write ${key} whose worker was killed mid-request has no tool call`);
    else if (call.status === 'succeeded' && requests < 2) lost(`the write ${key} succeeded though its only request's receipt never reached a worker`);
    else if (call.status === 'succeeded') v.writeKillsLanded++;
    else v.problems.push(`note: the write ${key} whose worker was killed mid-request: ${requests} requests at the service, call ${call.status}`);
  }
}

/** Each run's message (client message ID run-<runId>) as its session's sent messages: a 202 is an acknowledgement. */
function runMessagesBySession(record: ChaosRecord, lost: (what: string) => void): Map<string, SentMessage[]> {
  const out = new Map<string, SentMessage[]>();
  const recorded = new Set(record.sessions.map((s) => s.id));
  for (const r of record.runs) {
    if (r.runIds.length === 0 || r.sessionId === null) continue;
    if (!recorded.has(r.sessionId)) {
      lost(`run key ${r.key}: its session ${r.sessionId} was not recorded`);
      continue;
    }
    const list = out.get(r.sessionId) ?? [];
    list.push({ clientMessageId: `run-${r.runIds[0]!}`, acknowledged: true, sends: r.submits });
    out.set(r.sessionId, list);
  }
  return out;
}
