import { loadSettings } from '../config/settings';
import { LocalModelServer } from './server';

async function main() {
  const settings = loadSettings();
  const server = new LocalModelServer({ port: settings.localModelPort, host: '127.0.0.1' });
  const { url } = await server.start();
  console.log(`offline demo model (Keel local model server) listening on ${url} — set OPENAI_API_KEY to use a real model`);
  const stop = () => {
    void server.stop().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((error: unknown) => {
  console.error('model server failed:', error);
  process.exit(1);
});
