import { useId, useState, type FormEvent } from 'react';
import { api, ApiError, query } from '../api/client';
import type { Agent, AgentVersions, AnalyticsReport, Classification, Incident, Objective, OpenApiImport, SloReport } from '../api/types';
import { Empty, ErrorState, Loading, Unavailable } from '../components/states';
import { duration, formatTime, percent, usd } from '../format';
import { useLoad, type Loaded } from '../use-load';

const RANGES = ['1d', '7d', '30d', '90d', '365d'];

/** Analytics and SLOs for a range, agent versions, incidents and OpenAPI imports: each shows an empty state where its API is missing or forbidden. */
export function DashboardPage() {
  const rangeId = useId();
  const [range, setRange] = useState('7d');
  return (
    <main className="page dashboard" id="main">
      <header className="page-header">
        <h1>Dashboard</h1>
        <div className="inline-field">
          <label htmlFor={rangeId}>Range</label>
          <select id={rangeId} value={range} onChange={(e) => setRange(e.target.value)}>
            {RANGES.map((r) => (
              <option key={r} value={r}>
                last {r.replace('d', ' days').replace(/^1 days$/, '24 hours')}
              </option>
            ))}
          </select>
        </div>
      </header>
      <Analytics range={range} />
      <Slo range={range} />
      <Agents />
      <Incidents />
      <Imports />
    </main>
  );
}

/** Loading, failure (a clear empty state when forbidden or missing) or the content. */
function Section<T>({ title, loaded, what, children }: { title: string; loaded: Loaded<T>; what: string; children: (data: T) => React.ReactNode }) {
  const headingId = useId();
  let body: React.ReactNode;
  if (loaded.loading && !loaded.data) body = <Loading what={what} />;
  else if (loaded.error) body = loaded.error.unavailable ? <Unavailable error={loaded.error} what={title} /> : <ErrorState error={loaded.error} onRetry={loaded.reload} what={what} />;
  else body = children(loaded.data as T);
  return (
    <section className="card section" aria-labelledby={headingId}>
      <h2 id={headingId}>{title}</h2>
      {body}
    </section>
  );
}

function Stat({ label, value, hint }: { label: string; value: string | number; hint?: string }) {
  return (
    <div className="stat" data-testid="stat">
      <span className="stat-value">{value}</span>
      <span className="stat-label">{label}</span>
      {hint ? <span className="muted small">{hint}</span> : null}
    </div>
  );
}

function Analytics({ range }: { range: string }) {
  const loaded = useLoad((signal) => api<AnalyticsReport>(`/api/v1/analytics${query({ range })}`, { signal }), `analytics-${range}`);
  return (
    <Section title="Conversations" loaded={loaded} what="analytics">
      {(a) =>
        a.conversations.total === 0 && a.toolCalls.length === 0 ? (
          <Empty>
            <p data-testid="analytics-empty">No conversations in this range yet.</p>
          </Empty>
        ) : (
          <>
            <div className="stats" data-testid="analytics">
              <Stat label="conversations" value={a.conversations.total} hint={`${a.conversations.open} open · ${a.conversations.resolved} resolved`} />
              <Stat label="resolution rate" value={percent(a.conversations.resolutionRate)} />
              <Stat label="escalation rate" value={percent(a.conversations.escalationRate)} />
              <Stat label="average turns" value={a.conversations.averageTurns === null ? '—' : a.conversations.averageTurns.toFixed(1)} />
              <Stat label="cost" value={usd(a.costUsd)} hint={`${a.tokens.input} in · ${a.tokens.output} out tokens`} />
              <Stat label="time to first token p95" value={duration(a.ttft.p95Ms)} hint={`${a.ttft.replies} replies`} />
              <Stat label="approvals" value={a.approvals.requested} hint={`${a.approvals.approved} approved · ${a.approvals.rejected} rejected · ${a.approvals.pending} pending`} />
            </div>
            {a.agents.length > 0 ? (
              <div className="table-wrap">
                <table>
                  <caption>Agents</caption>
                  <thead>
                    <tr>
                      <th scope="col">Agent</th>
                      <th scope="col">Conversations</th>
                      <th scope="col">Turns</th>
                    </tr>
                  </thead>
                  <tbody>
                    {a.agents.map((g) => (
                      <tr key={g.agent}>
                        <td>{g.agent}</td>
                        <td>{g.conversations}</td>
                        <td>{g.turns}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            ) : null}
            {a.toolCalls.length > 0 ? (
              <div className="table-wrap">
                <table>
                  <caption>Tool calls</caption>
                  <thead>
                    <tr>
                      <th scope="col">Tool</th>
                      <th scope="col">Status</th>
                      <th scope="col">Calls</th>
                    </tr>
                  </thead>
                  <tbody>
                    {a.toolCalls.map((t) => (
                      <tr key={`${t.tool}-${t.status}`}>
                        <td>{t.tool}</td>
                        <td>{t.status}</td>
                        <td>{t.calls}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            ) : null}
            <p className="muted small">
              Scope: {a.scope === 'all' ? 'every user (admin token)' : 'your sessions'} · {formatTime(a.from)} to {formatTime(a.to)}
            </p>
          </>
        )
      }
    </Section>
  );
}

function SloBadge({ name, objective, format }: { name: string; objective: Objective; format: (v: number) => string }) {
  const state = objective.met === null ? 'unknown' : objective.met ? 'met' : 'missed';
  return (
    <div className={`slo slo-${state}`} data-testid="slo-badge">
      <span className="slo-name">{name}</span>
      <span className="slo-value">{objective.value === null ? 'no data' : format(objective.value)}</span>
      <span className="small">
        target {format(objective.target)} · {state}
      </span>
    </div>
  );
}

function Slo({ range }: { range: string }) {
  const loaded = useLoad((signal) => api<SloReport>(`/api/v1/slo${query({ window: range })}`, { signal }), `slo-${range}`);
  const seconds = (v: number) => `${v.toFixed(1)} s`;
  return (
    <Section title="Background run SLOs" loaded={loaded} what="SLOs">
      {(s) => (
        <>
          <div className="slos">
            <SloBadge name="time to execute p95" objective={s.objectives.timeToExecuteP95} format={seconds} />
            <SloBadge name="time to execute p99" objective={s.objectives.timeToExecuteP99} format={seconds} />
            <SloBadge name="success rate" objective={s.objectives.successRate} format={(v) => percent(v)} />
            <SloBadge name="availability" objective={s.objectives.availability} format={(v) => percent(v)} />
          </div>
          <p className="muted small">{s.runs.total === 0 ? 'No background runs in this window: nothing to measure.' : `${s.runs.total} runs, ${s.runs.overdue} overdue, ${s.runs.platformFailures} platform failures.`}</p>
        </>
      )}
    </Section>
  );
}

function Agents() {
  const loaded = useLoad((signal) => api<{ agents: Agent[] }>('/api/v1/agents', { signal }), 'agents');
  return (
    <Section title="Agents and versions" loaded={loaded} what="agents">
      {(data) =>
        data.agents.length === 0 ? (
          <Empty>No agents.</Empty>
        ) : (
          <ul className="agent-list">
            {data.agents.map((a) => (
              <li key={a.id}>
                <AgentReleases agent={a} />
              </li>
            ))}
          </ul>
        )
      }
    </Section>
  );
}

function AgentReleases({ agent }: { agent: Agent }) {
  const [open, setOpen] = useState(false);
  return (
    <div className="agent">
      <p>
        <strong>{agent.name}</strong> <code>{agent.id}</code> · active v{agent.release?.activeVersion ?? agent.version}
        {agent.release?.canaryVersion ? ` · canary v${agent.release.canaryVersion} (${agent.release.canaryPercent} %)` : ''}{' '}
        <button type="button" className="secondary small" aria-expanded={open} onClick={() => setOpen(!open)}>
          {open ? 'Hide versions' : 'Versions'}
        </button>
      </p>
      {open ? <Versions agentId={agent.id} /> : null}
    </div>
  );
}

function Versions({ agentId }: { agentId: string }) {
  const [version, setVersion] = useState(0);
  const loaded = useLoad((signal) => api<AgentVersions>(`/api/v1/agents/${encodeURIComponent(agentId)}/versions`, { signal }), `versions-${agentId}-${version}`);
  const [message, setMessage] = useState<{ tone: 'ok' | 'error'; text: string } | null>(null);
  const act = async (path: string, body: Record<string, unknown>, done: string) => {
    setMessage(null);
    try {
      await api(`/api/v1/agents/${encodeURIComponent(agentId)}/${path}`, { method: 'POST', body });
      setMessage({ tone: 'ok', text: done });
      setVersion((v) => v + 1);
    } catch (e) {
      const text = e instanceof ApiError ? (e.status === 403 ? 'Only an admin token can change releases.' : `${e.message} (${e.code})`) : String(e);
      setMessage({ tone: 'error', text });
    }
  };
  const rollback = (v: number) => {
    const reason = window.prompt(`Why roll back version ${v} of ${agentId}?`);
    if (reason && reason.trim()) void act('rollback', { reason: reason.trim(), version: v }, `Version ${v} rolled back.`);
  };
  if (loaded.loading && !loaded.data) return <Loading what="versions" />;
  if (loaded.error) return loaded.error.status === 403 ? <p className="notice">Versions and releases need an admin token.</p> : <ErrorState error={loaded.error} onRetry={loaded.reload} what="versions" />;
  const data = loaded.data!;
  return (
    <div className="table-wrap">
      {message ? (
        <p className={message.tone === 'error' ? 'error-text' : 'notice'} role={message.tone === 'error' ? 'alert' : 'status'}>
          {message.text}
        </p>
      ) : null}
      <table>
        <thead>
          <tr>
            <th scope="col">Version</th>
            <th scope="col">Status</th>
            <th scope="col">Published</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {data.versions.map((v) => (
            <tr key={v.version}>
              <td>v{v.version}</td>
              <td>
                <span className={`badge version-${v.status}`}>{v.status}</span>
              </td>
              <td>
                {formatTime(v.createdAt)}
                {v.publishedBy ? ` by ${v.publishedBy}` : ''}
              </td>
              <td>
                {v.status === 'active' || v.status === 'canary' ? (
                  <button type="button" className="secondary small" onClick={() => rollback(v.version)}>
                    Roll back
                  </button>
                ) : (
                  <button type="button" className="secondary small" onClick={() => void act('activate', { version: v.version }, `Version ${v.version} activated.`)}>
                    Activate
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Incidents() {
  const loaded = useLoad((signal) => api<{ incidents: Incident[] }>(`/api/v1/incidents${query({ limit: 20 })}`, { signal }), 'incidents');
  return (
    <Section title="Incidents" loaded={loaded} what="incidents">
      {(data) =>
        data.incidents.length === 0 ? (
          <Empty>No incidents.</Empty>
        ) : (
          <ul className="incident-list">
            {data.incidents.map((i) => (
              <li key={String(i.id)}>
                <span className={`badge severity-${i.severity}`}>{i.severity}</span> <strong>{i.kind}</strong> {i.summary}
                <span className="muted small">
                  {' '}
                  · {i.agentId ? `${i.agentId} v${i.version} · ` : ''}
                  {formatTime(i.detectedAt)}
                  {i.rolledBackAt ? ' · rolled back' : ''}
                </span>
              </li>
            ))}
          </ul>
        )
      }
    </Section>
  );
}

/** Imports to review. The list route may not exist on this server: an import can still be opened by its ID. */
function Imports() {
  const loaded = useLoad((signal) => api<{ imports: OpenApiImport[] }>('/api/v1/openapi/imports', { signal }), 'imports');
  const inputId = useId();
  const [id, setId] = useState('');
  const [opened, setOpened] = useState<{ import: OpenApiImport; classifications: Classification[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const open = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    setOpened(null);
    try {
      const path = `/api/v1/openapi/imports/${encodeURIComponent(id.trim())}`;
      const [imp, cls] = await Promise.all([api<OpenApiImport>(path), api<{ classifications: Classification[] }>(`${path}/classifications`)]);
      setOpened({ import: imp, classifications: cls.classifications });
    } catch (e) {
      setError(e instanceof ApiError ? (e.status === 403 ? 'Reviewing imports needs an admin token.' : `${e.message} (${e.code})`) : String(e));
    }
  };
  const forbidden = loaded.error?.status === 403;
  return (
    <section className="card section" aria-labelledby={`${inputId}-h`}>
      <h2 id={`${inputId}-h`}>OpenAPI imports</h2>
      {loaded.loading && !loaded.data ? <Loading what="imports" /> : null}
      {loaded.error ? (
        loaded.error.unavailable ? (
          <Unavailable error={loaded.error} what="The import list" />
        ) : (
          <ErrorState error={loaded.error} onRetry={loaded.reload} what="imports" />
        )
      ) : null}
      {loaded.data ? (
        loaded.data.imports.length === 0 ? (
          <Empty>No imports.</Empty>
        ) : (
          <ul>
            {loaded.data.imports.map((i) => (
              <li key={i.id}>
                <code>{i.id}</code> {i.title ?? i.sourceUrl ?? ''} · <span className="badge">{i.status}</span>
              </li>
            ))}
          </ul>
        )
      ) : null}
      {forbidden ? null : (
        <form className="inline-form" onSubmit={(e) => void open(e)}>
          <label htmlFor={inputId}>Open an import by ID</label>
          <input id={inputId} value={id} onChange={(e) => setId(e.target.value)} placeholder="imp_…" />
          <button type="submit" className="secondary" disabled={!id.trim()}>
            Open
          </button>
        </form>
      )}
      {error ? (
        <p className="error-text" role="alert">
          {error}
        </p>
      ) : null}
      {opened ? (
        <div className="table-wrap">
          <p>
            <strong>{opened.import.title ?? opened.import.id}</strong> for <code>{opened.import.agentId}</code> · <span className="badge">{opened.import.status}</span>
            {opened.import.error ? <span className="error-text"> {opened.import.error.code}</span> : null}
          </p>
          <table>
            <thead>
              <tr>
                <th scope="col">Operation</th>
                <th scope="col">Access</th>
                <th scope="col">Approval</th>
                <th scope="col">Enabled</th>
              </tr>
            </thead>
            <tbody>
              {opened.classifications.map((c) => (
                <tr key={c.operationId}>
                  <td>
                    <code>
                      {c.method.toUpperCase()} {c.path}
                    </code>{' '}
                    {c.summary}
                  </td>
                  <td>{c.access}</td>
                  <td>{c.requiresApproval ? 'required' : 'no'}</td>
                  <td>{c.enabled ? 'yes' : 'no'}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <p className="muted small">Edit and approve with the API (docs/tools.md, “OpenAPI import”).</p>
        </div>
      ) : null}
    </section>
  );
}
