import { parseArgs } from 'node:util';
import { DEFAULTS, passed, runChaos, summary } from './harness';

/**
 * `npm run chaos -- --turns 50 --sessions 20 --run-clients 4 --runs 25 --seed 13`: turns are per
 * session, runs per run client. Exits 1 on any loss or duplicate.
 */
const { values } = parseArgs({
  options: {
    turns: { type: 'string', default: String(DEFAULTS.turnsPerSession) },
    sessions: { type: 'string', default: String(DEFAULTS.sessions) },
    'run-clients': { type: 'string', default: String(DEFAULTS.runClients) },
    runs: { type: 'string', default: String(DEFAULTS.runsPerClient) },
    seed: { type: 'string', default: String(DEFAULTS.seed) },
    'write-share': { type: 'string', default: String(DEFAULTS.writeShare) },
    verbose: { type: 'boolean', default: false },
  },
});

const log = (line: string) => console.error(`[chaos] ${line}`);
const opts = {
  ...DEFAULTS,
  sessions: Number(values.sessions),
  turnsPerSession: Number(values.turns),
  runClients: Number(values['run-clients']),
  runsPerClient: Number(values.runs),
  seed: Number(values.seed),
  writeShare: Number(values['write-share']),
  log,
};
const mayBeZero = new Set(['--seed', '--run-clients', '--runs']);
for (const [name, n] of [['--sessions', opts.sessions], ['--turns', opts.turnsPerSession], ['--run-clients', opts.runClients], ['--runs', opts.runsPerClient], ['--seed', opts.seed]] as const) {
  if (!Number.isInteger(n) || n < (mayBeZero.has(name) ? 0 : 1)) {
    console.error(`${name} must be a ${mayBeZero.has(name) ? 'non-negative' : 'positive'} integer`);
    process.exit(2);
  }
}

runChaos(opts).then(
  (result) => {
    const v = result.verdict;
    const findings = v.problems.filter((p) => values.verbose || !p.startsWith('note'));
    for (const p of findings) console.log(p);
    console.log(JSON.stringify({
      command: `npm run chaos -- --sessions ${opts.sessions} --turns ${opts.turnsPerSession} --run-clients ${opts.runClients} --runs ${opts.runsPerClient} --seed ${opts.seed}`,
      turns: v.turns,
      runs: v.runs,
      failedRuns: v.failedRuns,
      repeatedWebhookAttempts: v.repeatedWebhookAttempts,
      writeKillsLanded: v.writeKillsLanded,
      killsByKind: result.killsByKind,
      lost: v.lost,
      duplicated: v.duplicated,
      duplicatedEffects: v.duplicatedEffects,
      failedTurns: v.failedTurns,
      effects: v.effects,
      repeatedRequestsAtService: v.repeatedRequests,
      approvals: v.approvals,
      approverRequests: result.approverRequests,
      reconnects: result.reconnects,
      unexpectedExits: result.unexpectedExits,
      kills: result.kills.map((k) => `${(k.atMs / 1000).toFixed(1)}s ${k.kind}${k.kind === 'worker' || k.kind === 'api' || k.kind === 'write' ? k.index : ''}${k.key ? ` (${k.key})` : ''} down ${k.downMs}ms back ${(k.recoveredMs / 1000).toFixed(1)}s`),
      timings: { setupS: +result.timings.setupS.toFixed(1), driveS: +result.timings.driveS.toFixed(1), turnsPerS: +result.timings.turnsPerS.toFixed(2), verifyS: +result.timings.verifyS.toFixed(1) },
    }, null, 2));
    const writeKills = result.killsByKind.write;
    if (writeKills > 0 && v.writeKillsLanded === 0) console.log(`warning: ${writeKills} write kills, none landed between a write's request and its receipt (no write was in flight, or its retry did not succeed; --verbose shows notes)`);
    console.log(summary(result));
    process.exit(passed(result) ? 0 : 1);
  },
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
