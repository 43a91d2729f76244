import type { Log } from './services';
import { launch, type Ready } from './launcher';

/**
 * `npm start`: the whole of Keel from one command (scripts/launcher.ts), its embedded services
 * on fixed ports and persisted under the data directory, so a second start finds the sessions
 * of the first. Ctrl-C stops everything.
 */

const say: Log = (line) => console.log(`[keel] ${line}`);

function printBanner(ready: Ready): void {
  const { settings } = ready;
  const host = ['0.0.0.0', '::', ''].includes(settings.api.host) ? 'localhost' : settings.api.host;
  const api = `${host}:${ready.apiPort}`;
  const database = new URL(ready.database.url);
  database.password = database.password ? '***' : '';
  say('');
  say('Keel is ready.');
  say(`  API          http://${api}/api/v1   (health: /api/v1/health)`);
  say(`  WebSocket    ws://${api}/api/v1/sessions/<sessionId>/ws`);
  say(`  Temporal UI  ${ready.temporal.uiUrl ?? `(external Temporal at ${ready.temporal.address})`}`);
  say(`  Postgres     ${database.toString()}${ready.database.embedded ? ' (embedded)' : ''}`);
  say(`  Model        ${ready.model}`);
  if (ready.secrets.authDisabled) say('  Auth         DISABLED (KEEL_AUTH_DISABLED=true)');
  else {
    say(`  Dev token    ${ready.secrets.devToken}   (user "dev": Authorization: Bearer <token>, or ?token= on the WebSocket)`);
    say(`  Admin key    ${ready.secrets.adminApiKey}   (X-API-Key, for /api/v1/admin/tokens)`);
  }
  say('Press Ctrl-C to stop.');
  say('');
}

launch(
  {
    env: process.env,
    layout: { ports: { temporal: 7233, temporalUi: 8233, postgres: 5433 }, persistent: true },
    log: say,
    output: (source, line, stream) => (stream === 'stderr' ? process.stderr : process.stdout).write(`[${source}] ${line}\n`),
    signalExitCode: 0,
  },
  async (ready) => printBanner(ready),
);
