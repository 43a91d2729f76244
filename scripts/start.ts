import type { Log } from './services';
import { launch, type Ready } from './launcher';
import { ensureConsoleBuilt } from './console-build';

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
  say(`  Console      http://${api}/   (sign in with the dev token below)`);
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

// The console (web/dist) is built alongside the stack's start when missing or stale; the API serves whatever is there.
const consoleBuild = ensureConsoleBuilt(say).then(
  () => undefined,
  (error: unknown) => say(`the web console could not be built (the API answers / with how to build it): ${error instanceof Error ? error.message : String(error)}`),
);

launch(
  {
    env: process.env,
    layout: { ports: { temporal: 7233, temporalUi: 8233, postgres: 5433 }, persistent: true },
    log: say,
    output: (source, line, stream) => (stream === 'stderr' ? process.stderr : process.stdout).write(`[${source}] ${line}\n`),
    signalExitCode: 0,
  },
  async (ready) => {
    await consoleBuild;
    printBanner(ready);
  },
);
