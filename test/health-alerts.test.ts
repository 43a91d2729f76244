import { createHmac } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client, Connection } from '@temporalio/client';
import { releaseHealthScheduleId } from '../contracts/releases';
import { eventually, startStack, type Stack } from './support/stack';

/**
 * The operational alerts through the real Schedule: a stuck turn and a worker that stopped
 * heart-beating each become one incident, a metric and a signed notification webhook.
 */

const SECRET = 'alerts-test-secret';

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
}

let stack: Stack;
let receiver: http.Server;
const received: Received[] = [];
let temporal: Connection;
let admin: string;

beforeAll(async () => {
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')));
    req.on('end', () => {
      received.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  stack = await startStack({
    env: {
      KEEL_HEALTH_CHECKS_ENABLED: 'true',
      KEEL_HEALTH_CHECK_INTERVAL_MS: '1000',
      KEEL_RELEASE_WATCH_MS: '0',
      KEEL_ALERT_TURN_STUCK_MS: '2000',
      KEEL_ALERT_HEARTBEAT_STALE_MS: '3000',
      KEEL_WORKER_HEARTBEAT_MS: '500',
      KEEL_WEBHOOK_SECRET: SECRET,
      KEEL_NOTIFY_WEBHOOK_URL: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/incidents`,
    },
  });
  admin = await stack.issueToken('ops', true);
  temporal = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS });
});
afterAll(async () => {
  await new Client({ connection: temporal }).schedule.getHandle(releaseHealthScheduleId(stack.env.KEEL_TASK_QUEUE!)).delete().catch(() => undefined);
  await temporal?.close();
  await stack?.stop();
  await new Promise((resolve) => receiver.close(resolve));
});

async function incidents(kind: string): Promise<any[]> {
  const res = await stack.request('GET', `/api/v1/incidents?kind=${kind}`, undefined, { authorization: `Bearer ${admin}` });
  // A CI run once got no list here: say what came instead.
  if (res.status !== 200) throw new Error(`GET /incidents?kind=${kind}: ${res.status} ${res.text}`);
  return res.body.incidents as any[];
}

/** The notification for an incident, checked against a signature computed here from the secret. */
async function notificationFor(incidentId: string) {
  const hit = await eventually(async () => received.find((r) => JSON.parse(r.body).incident?.id === incidentId), 20_000, `the webhook for ${incidentId}`);
  const timestamp = String(hit.headers['x-keel-timestamp']);
  const expected = `sha256=${createHmac('sha256', SECRET).update(`${timestamp}.${hit.body}`).digest('hex')}`;
  expect(hit.headers['x-keel-signature']).toBe(expected);
  return JSON.parse(hit.body);
}

async function alertsCounted(kind: string): Promise<number> {
  const text = await (await fetch(stack.workerMetricsUrl)).text();
  return Number(new RegExp(`^keel_alerts_total\\{kind="${kind}"[^}]*\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
}

test('a turn that hangs past KEEL_ALERT_TURN_STUCK_MS raises one turn_stuck incident and its webhook', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { hangNext: 1 });
  await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'this will hang' });
  const [incident] = await eventually(async () => {
    const found = (await incidents('turn_stuck')).filter((i) => i.evidence.sessionId === sessionId);
    return found.length > 0 ? found : null;
  }, 30_000, 'the turn_stuck incident');
  expect(incident).toMatchObject({ kind: 'turn_stuck', severity: 'critical', evidence: { sessionId, turn: 1 } });
  const sent = await notificationFor(incident.id);
  expect(sent).toMatchObject({ type: 'incident', incident: { id: incident.id, kind: 'turn_stuck' } });
  expect(await alertsCounted('turn_stuck')).toBe(1);
  // Two later scheduled runs find the same turn: no second incident. Overlapping runs are skipped,
  // so once three more have started, at least two more have finished.
  const schedule = new Client({ connection: temporal }).schedule.getHandle(releaseHealthScheduleId(stack.env.KEEL_TASK_QUEUE!));
  const taken = async () => (await schedule.describe()).info.numActionsTaken;
  const seen = await taken();
  await eventually(async () => (await taken()) >= seen + 3, 20_000, 'two more scheduled checks to finish');
  expect((await incidents('turn_stuck')).filter((i) => i.evidence.sessionId === sessionId)).toHaveLength(1);
  await stack.request('POST', `/api/v1/sessions/${sessionId}/cancel`, {});
});

test('a worker killed without stopping raises one worker_stale incident, found by the next worker\'s schedule', async () => {
  const before = (await stack.request('GET', '/api/v1/workers', undefined, { authorization: `Bearer ${admin}` })).body.workers as any[];
  const killed = before.find((w) => !w.stale && w.stoppedAt === null);
  expect(killed).toBeDefined();
  await stack.killWorker('SIGKILL');
  await stack.startWorker();
  const [incident] = await eventually(async () => {
    const found = (await incidents('worker_stale')).filter((i) => i.evidence.identity === killed.identity);
    return found.length > 0 ? found : null;
  }, 30_000, 'the worker_stale incident');
  expect(incident.severity).toBe('warning');
  await notificationFor(incident.id);
  expect(await alertsCounted('worker_stale')).toBe(1);
});
