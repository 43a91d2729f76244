import WebSocket from 'ws';

import { readFileSync } from 'node:fs';

/**
 * A scripted chat against a running Keel (npm start): npx tsx scripts/demo-chat.ts [baseUrl] [token]
 * Without a token it uses the development token npm start keeps in .data/dev-token.
 */
async function main() {
  const base = process.argv[2] ?? 'http://127.0.0.1:3000';
  const token = process.argv[3] ?? readFileSync('.data/dev-token', 'utf8').trim();
  const res = await fetch(`${base}/api/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ title: 'demo' }) });
  const session = (await res.json()) as { id: string };
  console.log(`session ${session.id}`);
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/api/v1/sessions/${session.id}/ws?token=${encodeURIComponent(token)}`);
  const questions = ['Hello Keel', 'What did I say first?'];
  ws.on('message', (raw) => {
    const frame = JSON.parse(raw.toString()) as { type: string; data: { text?: string; content?: string } };
    if (frame.type === 'stream.delta') process.stdout.write(frame.data.text ?? '');
    else console.log(`\n< ${raw.toString()}`);
    if (frame.type === 'connected' || frame.type === 'turn.done') {
      const next = questions.shift();
      if (!next) return ws.close();
      console.log(`> ${next}`);
      ws.send(JSON.stringify({ type: 'message', content: next }));
    }
  });
  await new Promise((resolve) => ws.on('close', resolve));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
