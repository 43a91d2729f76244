import { readFileSync } from 'node:fs';
import WebSocket from 'ws';

/**
 * The ecommerce support desk, scripted, against a running `KEEL_TEMPLATE=ecommerce npm start`:
 *   npx tsx scripts/demo-support.ts [baseUrl]
 * It routes a lookup, runs two ordered actions that each wait for an approval (approved here, as
 * the user "dev"), asks for a person (escalation), writes as an operator and hands the
 * conversation back. It prints what a client sees, one line per event.
 */
const base = process.argv[2] ?? 'http://127.0.0.1:3000';
const token = readFileSync('.data/dev-token', 'utf8').trim();
const adminKey = readFileSync('.data/admin-api-key', 'utf8').trim();

type Frame = { type: string; seq?: number; data: Record<string, any> };

async function call(method: string, route: string, body: unknown, auth: string): Promise<any> {
  const res = await fetch(`${base}/api/v1${route}`, { method, headers: { 'content-type': 'application/json', ...(auth.startsWith('key:') ? { 'x-api-key': auth.slice(4) } : { authorization: `Bearer ${auth}` }) }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** One line per event, the fields a person reads. */
function show(f: Frame): string | null {
  const d = f.data;
  switch (f.type) {
    case 'route.decided':
      return `route.decided   ${d.outcome}: ${d.chosen.join(' → ') || '-'}`;
    case 'agent.started':
      return `agent.started   ${d.agent} (${d.reason})`;
    case 'agent.handoff':
      return `agent.handoff   ${d.from} → ${d.to}: ${d.reason}`;
    case 'tool.call':
      return `tool.call       ${d.name} ${JSON.stringify(d.arguments)}${d.requiresApproval ? '  (needs approval)' : ''}`;
    case 'approval.resolved':
      return `approval        ${d.outcome} by ${d.decidedBy}`;
    case 'tool.result':
      return `tool.result     ${d.name}: ${d.status} ${JSON.stringify(d.result ?? d.error ?? null).slice(0, 80)}…`;
    case 'stream.end':
      return d.content.trim() ? `reply           ${d.content.replace(/\s+/g, ' ').trim().slice(0, 110)}` : null;
    case 'clarification':
      return `clarification   ${d.question}`;
    case 'session.escalated':
      return `escalated       ${d.source}: ${d.reason}`;
    case 'escalation.delivered':
      return `webhook         success=${d.success} attempts=${d.attempts} ${d.error ?? ''}`;
    case 'operator.message':
      return `operator        ${d.operator}: ${d.content}`;
    case 'session.handed_back':
      return `handed back     by ${d.by}`;
    case 'turn.done':
      // A reply that was not streamed (a clarification, the escalation message) is only here.
      return `${d.agent === undefined && d.content ? `reply           ${d.content}\n` : ''}turn.done       ${d.status}${d.agent ? ` (${d.agent})` : ''}${d.awaitingOperator ? ' (held for the operator)' : ''}\n`;
    default:
      return null;
  }
}

async function main() {
  const admin = (await call('POST', '/admin/tokens', { userId: 'ops-sam', admin: true }, `key:${adminKey}`)).token as string;
  const session = await call('POST', '/sessions', { title: 'support demo' }, token);
  console.log(`session ${session.id} (agent ${session.agentId})\n`);
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/api/v1/sessions/${session.id}/ws?token=${encodeURIComponent(token)}`);
  const waiters: { pred: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  ws.on('message', (raw) => {
    const frame = JSON.parse(raw.toString()) as Frame;
    const line = show(frame);
    if (line) console.log(line);
    if (frame.type === 'approval.required') {
      console.log(`approval        ${frame.data.name} waits; approving over REST`);
      void call('POST', `/sessions/${session.id}/approvals/${frame.data.toolCallId}`, { approved: true, digest: frame.data.digest }, token);
    }
    for (const w of waiters.splice(0)) if (w.pred(frame)) w.resolve(frame);
    else waiters.push(w);
  });
  await new Promise((resolve) => ws.once('open', resolve));
  const next = (pred: (f: Frame) => boolean) => new Promise<Frame>((resolve) => waiters.push({ pred, resolve }));
  const say = async (content: string) => {
    console.log(`> ${content}`);
    const done = next((f) => f.type === 'turn.done');
    ws.send(JSON.stringify({ type: 'message', content }));
    await done;
  };
  await say('Where is order 1001?');
  await say('Please cancel order 1004 and send me a coupon for 10 % off');
  await say('I want to talk to a human');
  const reply = next((f) => f.type === 'operator.message');
  await call('POST', `/sessions/${session.id}/operator-messages`, { content: 'Hi, this is Sam. I have refunded the shipping.' }, admin);
  await reply;
  const back = next((f) => f.type === 'session.handed_back');
  await call('POST', `/sessions/${session.id}/hand-back`, {}, admin);
  await back;
  await say('Thanks! Where is order 1002?');
  ws.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
