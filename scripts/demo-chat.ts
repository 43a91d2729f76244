import WebSocket from 'ws';

/** A scripted chat against a running Keel (npm start): npx tsx scripts/demo-chat.ts [baseUrl] */
async function main() {
  const base = process.argv[2] ?? 'http://127.0.0.1:3000';
  const res = await fetch(`${base}/api/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ title: 'demo' }) });
  const session = (await res.json()) as { id: string };
  console.log(`session ${session.id}`);
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/api/v1/sessions/${session.id}/ws`);
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
