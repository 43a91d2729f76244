import { loadSettings } from '../config/settings';
import { LocalModelServer } from './server';

async function main() {
  const settings = loadSettings();
  const server = new LocalModelServer({ port: settings.localModelPort, host: '127.0.0.1' });
  const started = server.start();
  // Listen for signals before the port opens: supervisors send them as soon as it accepts connections.
  const stop = (signal: NodeJS.Signals) => {
    started
      .then(() => server.stop())
      .then(
        () => console.log(`offline demo model stopped (${signal})`),
        (error: unknown) => {
          console.error('offline demo model failed to stop:', error);
          process.exitCode = 1;
        },
      );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const { url } = await started;
  console.log(`offline demo model (Keel local model server) listening on ${url} — set OPENAI_API_KEY to use a real model`);
}

main().catch((error: unknown) => {
  console.error('offline demo model failed to start:', error);
  process.exit(1);
});
