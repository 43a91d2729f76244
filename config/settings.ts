import { z } from 'zod';
import { MAX_CONTENT_CHARS, MAX_FRAME_BYTES } from '../contracts/limits';
import type { SessionConfig } from '../contracts/session';
import { templateFile } from '../agents/templates';
import type { ToolSettings } from '../tools/tool';
import { DEFAULT_PRICES, PriceTable } from './pricing';

/**
 * Every setting, read once from the environment, defaulted and validated here.
 * Nothing else in the project reads process.env. See docs/configuration.md.
 */
const int = (def: number) => z.coerce.number().int().nonnegative().default(def);
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v));
const optionalUrl = optionalString.refine((v) => v === undefined || URL.canParse(v), 'must be a URL');

const Env = z.object({
  KEEL_DATA_DIR: z.string().default('.data'),
  KEEL_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  TEMPORAL_ADDRESS: optionalString,
  TEMPORAL_NAMESPACE: z.string().default('default'),
  KEEL_TASK_QUEUE: z.string().default('keel-sessions'),
  KEEL_WORKFLOW_BUNDLE: optionalString,
  KEEL_STICKY_QUEUE_TIMEOUT_MS: int(10_000),
  // Worker Versioning (docs/operations.md, "Worker Versioning"): both set, or neither.
  KEEL_DEPLOYMENT_NAME: optionalString,
  KEEL_BUILD_ID: optionalString,

  DATABASE_URL: optionalString,
  KEEL_DB_POOL_SIZE: int(10),
  // Outages (docs/operations.md, "Outages"): how long the API waits on an unreachable Postgres or Temporal.
  KEEL_DB_CONNECT_TIMEOUT_MS: int(5_000),
  KEEL_TEMPORAL_RPC_TIMEOUT_MS: int(5_000),

  KEEL_API_HOST: z.string().default('0.0.0.0'),
  KEEL_API_PORT: int(3000),
  // The web console's built files (docs/console.md); default <repo>/web/dist.
  KEEL_CONSOLE_DIR: optionalString,
  KEEL_WS_PING_INTERVAL_MS: int(30_000),
  KEEL_MAX_FRAME_BYTES: int(MAX_FRAME_BYTES),
  KEEL_MAX_CONTENT_CHARS: int(MAX_CONTENT_CHARS),
  KEEL_REST_BODY_LIMIT: z.string().default('64kb'),
  KEEL_CLIENT_HISTORY_BODY_LIMIT: z.string().default('8mb'),
  KEEL_AGUI_MAX_RESUME_ENTRIES: int(32),
  KEEL_CHAT_TIMEOUT_MS: int(120_000),
  KEEL_MAX_BUFFERED_BYTES: int(8 * 1024 * 1024),
  KEEL_SLOW_CONSUMER_MS: int(10_000),
  KEEL_REPLAY_PAGE_EVENTS: int(200),
  KEEL_WS_MAX_PENDING_FRAMES: int(32),
  KEEL_API_DRAIN_MS: int(30_000),
  KEEL_LISTENER_CHECK_MS: int(10_000),
  KEEL_LISTENER_RECONNECT_MS: int(200),
  // Presence and outside events (docs/presence.md).
  KEEL_TYPING_INTERVAL_MS: int(1_000),
  KEEL_EXTERNAL_EVENT_MAX_BYTES: int(8_192),
  KEEL_USER_FEED_CACHE_SESSIONS: int(10_000),

  OPENAI_API_KEY: optionalString,
  OPENAI_BASE_URL: optionalString,
  KEEL_MODEL: z.string().default('gpt-4o-mini'),
  KEEL_LLM_TIMEOUT_MS: int(60_000),
  KEEL_LLM_HEARTBEAT_TIMEOUT_MS: int(10_000),
  KEEL_LLM_MAX_ATTEMPTS: int(4),
  KEEL_LLM_RETRY_INITIAL_MS: int(1_000),
  KEEL_LLM_RETRY_MAX_MS: int(20_000),
  KEEL_LLM_RETRY_BACKOFF: z.coerce.number().min(1).default(2),
  KEEL_STREAM_COALESCE_MS: int(50),
  KEEL_CONTEXT_MAX_TURNS: int(100),

  KEEL_SESSION_IDLE_TTL_MS: int(30 * 60_000),
  KEEL_CONTINUE_AS_NEW_EVENTS: int(4_000),
  KEEL_SESSION_MAX_QUEUED: int(50),
  KEEL_SESSION_MAX_WAITING_EVENTS: int(100),
  KEEL_SESSION_RECENT_CLIENT_IDS: int(1_000),
  KEEL_LAST_ACTIVITY_RESOLUTION_MS: int(60_000),
  KEEL_PERSISTENCE_TIMEOUT_MS: int(10_000),
  KEEL_WORKER_SHUTDOWN_GRACE_MS: int(30_000),
  KEEL_WORKER_MAX_CACHED_WORKFLOWS: int(500),
  KEEL_WORKER_HEARTBEAT_THROTTLE_MS: int(1_000),
  KEEL_BUILD_VERSION: optionalString,
  KEEL_WORKER_HEARTBEAT_MS: int(5_000),
  KEEL_WORKERS_LIST_WINDOW_MS: int(60 * 60_000),
  KEEL_ALERT_HEARTBEAT_STALE_MS: int(120_000),
  KEEL_ALERT_TURN_STUCK_MS: int(10 * 60_000),

  KEEL_LOCAL_MODEL_PORT: int(8787),
  KEEL_WORKER_METRICS_PORT: int(9464),
  KEEL_ADMIN_API_KEY: optionalString,
  KEEL_AUTH_DISABLED: z.enum(['true', 'false']).default('false'),
  KEEL_DEV_TOKEN: optionalString,
  KEEL_TOKEN_CACHE_MS: int(10_000),
  KEEL_RATE_MESSAGES_PER_SESSION: int(10),
  KEEL_RATE_MESSAGES_WINDOW_MS: int(10_000),
  KEEL_RATE_REQUESTS_PER_TOKEN: int(600),
  KEEL_RATE_REQUESTS_WINDOW_MS: int(60_000),
  KEEL_MAX_SOCKETS_PER_USER: int(20),
  KEEL_MAX_SSE_PER_USER: int(20),

  // Unset: agents/agents.yaml, or the template's file (agents/templates.ts); both set is refused.
  KEEL_AGENTS_FILE: optionalString,
  KEEL_TEMPLATE: optionalString,
  KEEL_HEALTH_CHECKS_ENABLED: z.enum(['true', 'false']).default('true'),
  KEEL_HEALTH_CHECK_INTERVAL_MS: int(60_000),
  KEEL_HEALTH_WINDOW_MS: int(10 * 60_000),
  KEEL_HEALTH_MIN_SAMPLE: int(5),
  KEEL_HEALTH_MAX_TURN_ERROR_RATE: z.coerce.number().min(0).max(1).default(0.2),
  KEEL_HEALTH_MAX_TTFT_P95_MS: int(10_000),
  KEEL_HEALTH_MAX_TOOL_FAILURE_RATE: z.coerce.number().min(0).max(1).default(0.5),
  KEEL_HEALTH_PROBE_ATTEMPTS: int(2),
  KEEL_HEALTH_PROBE_TIMEOUT_MS: int(30_000),
  KEEL_RELEASE_WATCH_MS: int(10 * 60_000),
  KEEL_RELEASE_WATCH_INTERVAL_MS: int(10_000),
  KEEL_ROLLBACK_MOVE_SESSIONS: z.enum(['true', 'false']).default('true'),
  KEEL_PRICE_TABLE: z
    .string()
    .default('{}')
    .transform((text, ctx) => {
      try {
        return PriceTable.parse(JSON.parse(text));
      } catch {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'must be JSON like {"model":{"inputPerMTok":0.15,"outputPerMTok":0.6}}' });
        return z.NEVER;
      }
    }),
  KEEL_HTTP_ALLOW_HOSTS: z.string().default(''),
  KEEL_HTTP_TIMEOUT_MS: int(10_000),
  KEEL_HTTP_MAX_BYTES: int(64 * 1024),

  // OpenAPI import (docs/tools.md, "OpenAPI import").
  KEEL_OPENAPI_ALLOW_HOSTS: z.string().default(''),
  KEEL_OPENAPI_FETCH_TIMEOUT_MS: int(30_000),
  KEEL_OPENAPI_MAX_BYTES: int(10 * 1024 * 1024),
  KEEL_OPENAPI_MAX_OPERATIONS: int(200),
  KEEL_OPENAPI_CLASSIFY_CONCURRENCY: int(4),

  // MCP servers (docs/tools.md, "MCP servers").
  KEEL_MCP_REFRESH_MS: int(5 * 60_000),
  KEEL_MCP_CONNECT_TIMEOUT_MS: int(10_000),
  KEEL_MCP_TOOL_TIMEOUT_MS: int(30_000),
  KEEL_MCP_MAX_ATTEMPTS: int(3),
  KEEL_MCP_RETRY_MAX_MS: int(30_000),

  // Background runs, webhooks and SLOs (docs/runs.md).
  KEEL_RUN_DEDUPE_WINDOW_MS: int(60 * 60_000),
  KEEL_RUN_SEND_LEASE_MS: int(10_000),
  KEEL_RUN_UNSENT_GRACE_MS: int(30_000),
  KEEL_WEBHOOK_SECRET: optionalString,
  KEEL_WEBHOOK_ALLOW_HOSTS: z.string().default(''),
  KEEL_WEBHOOK_TIMEOUT_MS: int(10_000),
  KEEL_WEBHOOK_MAX_ATTEMPTS: int(8),
  KEEL_WEBHOOK_RETRY_INITIAL_MS: int(1_000),
  KEEL_WEBHOOK_RETRY_MAX_MS: int(60_000),
  KEEL_NOTIFY_WEBHOOK_URL: optionalUrl,
  KEEL_OUTBOX_POLL_MS: int(1_000),
  KEEL_OUTBOX_BATCH: int(100),
  KEEL_OUTBOX_LEASE_MS: int(30_000),
  KEEL_SLO_TTE_P95_SECONDS: z.coerce.number().positive().default(60),
  KEEL_SLO_TTE_P99_SECONDS: z.coerce.number().positive().default(120),
  KEEL_SLO_SUCCESS_RATE: z.coerce.number().min(0).max(1).default(0.99),
  KEEL_SLO_AVAILABILITY: z.coerce.number().min(0).max(1).default(0.995),
  KEEL_SLO_MAX_WINDOW_MS: int(30 * 24 * 60 * 60_000),

  // Escalation to a person (docs/escalation.md).
  KEEL_ESCALATION_WEBHOOK_URL: optionalUrl,
  KEEL_ESCALATION_WEBHOOK_SECRET: optionalString,
  KEEL_ESCALATION_TIMEOUT_MS: int(10_000),
  KEEL_ESCALATION_MAX_ATTEMPTS: int(3),
  KEEL_ESCALATION_BACKOFF_MS: int(2_000),
  KEEL_ESCALATION_MESSAGE: z.string().min(1).default("I'm passing this conversation to a member of our team. Someone will reply here shortly."),
  KEEL_ESCALATION_SUMMARY_MESSAGES: int(10),
  KEEL_ESCALATION_SUMMARY_CHARS: int(4_000),

  // The standard OpenTelemetry names; with neither endpoint set, tracing is off.
  OTEL_EXPORTER_OTLP_ENDPOINT: optionalUrl,
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: optionalUrl,
  OTEL_BSP_SCHEDULE_DELAY: int(5_000),
});

export type Settings = ReturnType<typeof loadSettings>;

function workerDeploymentOf(deploymentName: string | undefined, buildId: string | undefined): { deploymentName: string; buildId: string } | undefined {
  if (deploymentName === undefined && buildId === undefined) return undefined;
  if (deploymentName === undefined || buildId === undefined) {
    throw new Error('Invalid configuration: KEEL_DEPLOYMENT_NAME and KEEL_BUILD_ID turn on Worker Versioning together: set both or neither');
  }
  // The server refuses it: `.` delimited the older `<deploymentName>.<buildId>` version strings.
  if (deploymentName.includes('.')) throw new Error('Invalid configuration: KEEL_DEPLOYMENT_NAME must not contain "."');
  return { deploymentName, buildId };
}

export function loadSettings(env: NodeJS.ProcessEnv = process.env) {
  const parsed = Env.safeParse(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new Error(`Invalid configuration: ${problems}`);
  }
  const e = parsed.data;
  if (e.KEEL_WORKERS_LIST_WINDOW_MS <= e.KEEL_ALERT_HEARTBEAT_STALE_MS) {
    throw new Error('Invalid configuration: KEEL_WORKERS_LIST_WINDOW_MS must be longer than KEEL_ALERT_HEARTBEAT_STALE_MS (a worker silent for longer than the window is no longer checked)');
  }
  return {
    dataDir: e.KEEL_DATA_DIR,
    logLevel: e.KEEL_LOG_LEVEL,
    temporal: {
      address: e.TEMPORAL_ADDRESS,
      namespace: e.TEMPORAL_NAMESPACE,
      taskQueue: e.KEEL_TASK_QUEUE,
      workflowBundlePath: e.KEEL_WORKFLOW_BUNDLE,
      stickyQueueTimeoutMs: e.KEEL_STICKY_QUEUE_TIMEOUT_MS,
      /** Set: the worker is this Worker Deployment Version and the runs it starts are pinned to it; unset: unversioned, as before. */
      deployment: workerDeploymentOf(e.KEEL_DEPLOYMENT_NAME, e.KEEL_BUILD_ID),
    },
    databaseUrl: e.DATABASE_URL,
    dbPoolSize: e.KEEL_DB_POOL_SIZE,
    /** One attempt to open a Postgres connection; a refused or timed-out one is not retried (the caller gets SERVICE_UNAVAILABLE). */
    dbConnectTimeoutMs: Math.max(100, e.KEEL_DB_CONNECT_TIMEOUT_MS),
    /** The deadline of the API's calls to Temporal (signals, queries, health checks), retries included. */
    temporalRpcTimeoutMs: Math.max(100, e.KEEL_TEMPORAL_RPC_TIMEOUT_MS),
    api: {
      host: e.KEEL_API_HOST,
      port: e.KEEL_API_PORT,
      /** The web console's built directory; undefined: web/dist of this checkout. */
      consoleDir: e.KEEL_CONSOLE_DIR,
      wsPingIntervalMs: e.KEEL_WS_PING_INTERVAL_MS,
      maxFrameBytes: Math.min(e.KEEL_MAX_FRAME_BYTES, MAX_FRAME_BYTES),
      maxContentChars: Math.min(e.KEEL_MAX_CONTENT_CHARS, MAX_CONTENT_CHARS),
      restBodyLimit: e.KEEL_REST_BODY_LIMIT,
      /** AG-UI and AI SDK requests, which carry the client's whole conversation. */
      clientHistoryBodyLimit: e.KEEL_CLIENT_HISTORY_BODY_LIMIT,
      /** Resume entries one AG-UI run may carry (docs/agui.md); more is VALIDATION_ERROR. */
      aguiMaxResumeEntries: Math.max(1, e.KEEL_AGUI_MAX_RESUME_ENTRIES),
      chatTimeoutMs: e.KEEL_CHAT_TIMEOUT_MS,
      /** Unsent bytes a WebSocket or SSE connection may hold before it waits, and is cut off after slowConsumerMs. */
      maxBufferedBytes: Math.max(1, e.KEEL_MAX_BUFFERED_BYTES),
      slowConsumerMs: e.KEEL_SLOW_CONSUMER_MS,
      replayPageEvents: Math.max(1, e.KEEL_REPLAY_PAGE_EVENTS),
      wsMaxPendingFrames: Math.max(1, e.KEEL_WS_MAX_PENDING_FRAMES),
      /** How long a stopping API lets in-flight /chat requests finish. */
      drainMs: e.KEEL_API_DRAIN_MS,
      /** The LISTEN connection is pinged this often; a ping unanswered as long reconnects it. */
      listenerCheckMs: Math.max(100, e.KEEL_LISTENER_CHECK_MS),
      listenerReconnectMs: Math.max(1, e.KEEL_LISTENER_RECONNECT_MS),
    },
    presence: {
      /** A socket's typing frames are relayed at most once per this interval (0: every one). */
      typingIntervalMs: e.KEEL_TYPING_INTERVAL_MS,
      /** Largest external event `data`, as JSON bytes. */
      externalEventMaxBytes: Math.max(2, e.KEEL_EXTERNAL_EVENT_MAX_BYTES),
      /** Sessions whose owner and escalation state each API process remembers for its per-user sockets. */
      userFeedCacheSessions: Math.max(1, e.KEEL_USER_FEED_CACHE_SESSIONS),
    },
    llm: {
      apiKey: e.OPENAI_API_KEY,
      baseUrl: e.OPENAI_BASE_URL,
      model: e.KEEL_MODEL,
      timeoutMs: e.KEEL_LLM_TIMEOUT_MS,
      streamCoalesceMs: e.KEEL_STREAM_COALESCE_MS,
      /** Turns of the conversation each model call is sent: the work (and memory) of a turn stays bounded in a long session. */
      contextMaxTurns: Math.max(1, e.KEEL_CONTEXT_MAX_TURNS),
    },
    worker: {
      /** How long a stopping worker lets running activities (model streams, tools) finish before cancelling them. */
      shutdownGraceMs: e.KEEL_WORKER_SHUTDOWN_GRACE_MS,
      /** The longest a running activity's heartbeat is held back: also how late a cancel can reach a model call or a tool. */
      heartbeatThrottleMs: Math.max(100, e.KEEL_WORKER_HEARTBEAT_THROTTLE_MS),
      /** Workflow executions kept in memory (the SDK's sticky cache); one evicted is replayed from its history when it next wakes. */
      maxCachedWorkflows: Math.max(2, e.KEEL_WORKER_MAX_CACHED_WORKFLOWS),
    },
    localModelPort: e.KEEL_LOCAL_MODEL_PORT,
    workerMetricsPort: e.KEEL_WORKER_METRICS_PORT,
    /** KEEL_BUILD_VERSION as given; config/build-version.ts works out the default. */
    buildVersion: e.KEEL_BUILD_VERSION,
    operations: {
      /** How often each worker writes its heartbeat row (docs/operations.md). */
      workerHeartbeatMs: Math.max(100, e.KEEL_WORKER_HEARTBEAT_MS),
      /** Workers whose last heartbeat is this recent are listed by GET /workers and checked for staleness. */
      workersWindowMs: Math.max(1, e.KEEL_WORKERS_LIST_WINDOW_MS),
      /** A worker not marked stopped whose last heartbeat is older than this is stale. */
      heartbeatStaleMs: Math.max(1, e.KEEL_ALERT_HEARTBEAT_STALE_MS),
      /** A turn running this long without its turn.done is stuck. */
      turnStuckMs: Math.max(1, e.KEEL_ALERT_TURN_STUCK_MS),
    },
    rateLimits: {
      messagesPerSession: e.KEEL_RATE_MESSAGES_PER_SESSION,
      messagesWindowMs: Math.max(1, e.KEEL_RATE_MESSAGES_WINDOW_MS),
      requestsPerToken: e.KEEL_RATE_REQUESTS_PER_TOKEN,
      requestsWindowMs: Math.max(1, e.KEEL_RATE_REQUESTS_WINDOW_MS),
      socketsPerUser: e.KEEL_MAX_SOCKETS_PER_USER,
      sseStreamsPerUser: e.KEEL_MAX_SSE_PER_USER,
    },
    auth: {
      adminApiKey: e.KEEL_ADMIN_API_KEY,
      disabled: e.KEEL_AUTH_DISABLED === 'true',
      devToken: e.KEEL_DEV_TOKEN,
      tokenCacheMs: e.KEEL_TOKEN_CACHE_MS,
    },
    session: {
      idleTtlMs: e.KEEL_SESSION_IDLE_TTL_MS,
      continueAsNewAfterEvents: Math.max(1, e.KEEL_CONTINUE_AS_NEW_EVENTS),
      maxQueuedMessages: Math.max(1, e.KEEL_SESSION_MAX_QUEUED),
      maxWaitingEvents: Math.max(1, e.KEEL_SESSION_MAX_WAITING_EVENTS),
      recentClientIdLimit: Math.max(1, e.KEEL_SESSION_RECENT_CLIENT_IDS),
      lastActivityResolutionMs: e.KEEL_LAST_ACTIVITY_RESOLUTION_MS,
      persistenceTimeoutMs: Math.max(1_000, e.KEEL_PERSISTENCE_TIMEOUT_MS),
      escalationTimeoutMs: escalationActivityTimeoutMs(e),
      llm: {
        startToCloseTimeoutMs: e.KEEL_LLM_TIMEOUT_MS + 5_000,
        heartbeatTimeoutMs: e.KEEL_LLM_HEARTBEAT_TIMEOUT_MS,
        maxAttempts: e.KEEL_LLM_MAX_ATTEMPTS,
        initialIntervalMs: e.KEEL_LLM_RETRY_INITIAL_MS,
        maximumIntervalMs: e.KEEL_LLM_RETRY_MAX_MS,
        backoffCoefficient: e.KEEL_LLM_RETRY_BACKOFF,
      },
    } satisfies Omit<SessionConfig, 'agent'>,
    agentsFile: agentsFileOf(e.KEEL_AGENTS_FILE, e.KEEL_TEMPLATE),
    /** The agent template this deployment runs (docs/templates.md), when KEEL_TEMPLATE names one. */
    template: e.KEEL_TEMPLATE,
    releases: {
      /** Whether the worker keeps the release health-check Schedule (created idempotently at start). */
      healthChecksEnabled: e.KEEL_HEALTH_CHECKS_ENABLED === 'true',
      checkIntervalMs: Math.max(1_000, e.KEEL_HEALTH_CHECK_INTERVAL_MS),
      /** How far back the live signals (turn errors, TTFT, tool failures) look. */
      windowMs: Math.max(1_000, e.KEEL_HEALTH_WINDOW_MS),
      /** Observations a live rate needs before it can fail a version. */
      minSample: Math.max(1, e.KEEL_HEALTH_MIN_SAMPLE),
      thresholds: {
        maxTurnErrorRate: e.KEEL_HEALTH_MAX_TURN_ERROR_RATE,
        maxTtftP95Ms: e.KEEL_HEALTH_MAX_TTFT_P95_MS,
        maxToolFailureRate: e.KEEL_HEALTH_MAX_TOOL_FAILURE_RATE,
      },
      /** A probe fails a version only after failing this many times in a row within one check. */
      probeAttempts: Math.max(1, e.KEEL_HEALTH_PROBE_ATTEMPTS),
      probeTimeoutMs: Math.max(100, e.KEEL_HEALTH_PROBE_TIMEOUT_MS),
      /** After an activation, the new version is watched this long… */
      watchMs: e.KEEL_RELEASE_WATCH_MS,
      /** …and checked this often. */
      watchIntervalMs: Math.max(500, e.KEEL_RELEASE_WATCH_INTERVAL_MS),
      /** Whether sessions on a rolled-back version move to the replacement at their next turn (else they keep it). */
      moveSessions: e.KEEL_ROLLBACK_MOVE_SESSIONS === 'true',
    },
    prices: { ...DEFAULT_PRICES, ...e.KEEL_PRICE_TABLE },
    /** Every KEEL_SECRET_<NAME> by NAME: credentials tools name (an OpenAPI import's auth header), never stored elsewhere. */
    secrets: secretsOf(env),
    openapi: {
      /** Hosts (host or host:port) a spec URL may name although they are private or loopback addresses. */
      allowHosts: e.KEEL_OPENAPI_ALLOW_HOSTS.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean),
      fetchTimeoutMs: Math.max(100, e.KEEL_OPENAPI_FETCH_TIMEOUT_MS),
      maxBytes: Math.max(1, e.KEEL_OPENAPI_MAX_BYTES),
      /** A spec with more operations is refused (SPEC_TOO_LARGE). */
      maxOperations: Math.max(1, e.KEEL_OPENAPI_MAX_OPERATIONS),
      /** Operations classified by the model at once. */
      classifyConcurrency: Math.max(1, e.KEEL_OPENAPI_CLASSIFY_CONCURRENCY),
    },
    mcp: {
      /** How often each process lists a server's tools again (a server's `refreshMs` wins). */
      refreshMs: Math.max(1_000, e.KEEL_MCP_REFRESH_MS),
      /** Bounds connecting (spawning a stdio server, the initialize handshake) and each request listing its tools. */
      connectTimeoutMs: Math.max(100, e.KEEL_MCP_CONNECT_TIMEOUT_MS),
      /** A discovered tool's time-out unless its server's `timeoutMs` or an agent's toolPolicy sets one. */
      toolTimeoutMs: Math.max(100, e.KEEL_MCP_TOOL_TIMEOUT_MS),
      /** Attempts of one call when the server is unreachable or drops it, unless its server's `maxAttempts` says. */
      maxAttempts: Math.max(1, e.KEEL_MCP_MAX_ATTEMPTS),
      /** The longest wait between two discovery attempts of a server that is down (1 s, then doubling up to this). */
      retryMaxMs: Math.max(1_000, e.KEEL_MCP_RETRY_MAX_MS),
    },
    tools: {
      httpAllowHosts: e.KEEL_HTTP_ALLOW_HOSTS.split(',').map((h) => h.trim()).filter(Boolean),
      httpTimeoutMs: e.KEEL_HTTP_TIMEOUT_MS,
      httpMaxBytes: e.KEEL_HTTP_MAX_BYTES,
    } satisfies ToolSettings,
    runs: {
      /** An un-keyed repeat (same user, agent, session and input) within this long answers the same run. */
      dedupeWindowMs: Math.max(1, e.KEEL_RUN_DEDUPE_WINDOW_MS),
      /** A repeat takes over sending a run's message once its submitter has not done so for this long (it died). */
      sendLeaseMs: Math.max(100, e.KEEL_RUN_SEND_LEASE_MS),
      /** How long after a send lease ran out the worker's outbox sends a run's message itself (the API died, nobody repeated). */
      unsentGraceMs: e.KEEL_RUN_UNSENT_GRACE_MS,
    },
    webhooks: {
      /** HMAC-SHA256 key of the X-Keel-Signature header; unset, runs refuse webhookUrl and incidents are not sent. */
      secret: e.KEEL_WEBHOOK_SECRET,
      /** Hosts (host or host:port) a webhook URL may name although they are private or loopback addresses. */
      allowHosts: e.KEEL_WEBHOOK_ALLOW_HOSTS.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean),
      timeoutMs: Math.max(100, e.KEEL_WEBHOOK_TIMEOUT_MS),
      retry: {
        maximumAttempts: Math.max(1, e.KEEL_WEBHOOK_MAX_ATTEMPTS),
        initialIntervalMs: Math.max(1, e.KEEL_WEBHOOK_RETRY_INITIAL_MS),
        maximumIntervalMs: Math.max(1, e.KEEL_WEBHOOK_RETRY_MAX_MS, e.KEEL_WEBHOOK_RETRY_INITIAL_MS),
      },
      /** Where incidents are posted (the operator's own receiver: no address check). */
      notifyUrl: e.KEEL_NOTIFY_WEBHOOK_URL,
      outboxPollMs: Math.max(50, e.KEEL_OUTBOX_POLL_MS),
      outboxBatch: Math.max(1, e.KEEL_OUTBOX_BATCH),
      /** How long a worker's outbox owns the runs it claimed; a dead worker's go to another after it. */
      outboxLeaseMs: Math.max(1_000, e.KEEL_OUTBOX_LEASE_MS),
    },
    escalation: {
      /** Where escalations are POSTed; unset, an escalation is recorded as not delivered (the user is still told). */
      webhookUrl: e.KEEL_ESCALATION_WEBHOOK_URL,
      /** HMAC key of its X-Keel-Signature; falls back to KEEL_WEBHOOK_SECRET. */
      secret: e.KEEL_ESCALATION_WEBHOOK_SECRET ?? e.KEEL_WEBHOOK_SECRET,
      timeoutMs: Math.max(100, e.KEEL_ESCALATION_TIMEOUT_MS),
      maxAttempts: Math.max(1, e.KEEL_ESCALATION_MAX_ATTEMPTS),
      /** The wait after the first failed attempt; it doubles after each further one. */
      backoffMs: e.KEEL_ESCALATION_BACKOFF_MS,
      /** What the user is told when the agent has no personality.escalationMessage. */
      defaultMessage: e.KEEL_ESCALATION_MESSAGE,
      /** The webhook's conversationSummary: the last this-many user, assistant and operator messages… */
      summaryMessages: Math.max(1, e.KEEL_ESCALATION_SUMMARY_MESSAGES),
      /** …cut to this many characters (the oldest text goes first). */
      summaryChars: Math.max(100, e.KEEL_ESCALATION_SUMMARY_CHARS),
      /**
       * What the escalate activity's startToCloseTimeout must exceed: every attempt's time-out and
       * every back-off wait, plus 15 s for the address checks and the writes.
       */
      activityTimeoutMs: escalationActivityTimeoutMs(e),
    },
    slo: {
      tteP95Seconds: e.KEEL_SLO_TTE_P95_SECONDS,
      tteP99Seconds: e.KEEL_SLO_TTE_P99_SECONDS,
      successRate: e.KEEL_SLO_SUCCESS_RATE,
      availability: e.KEEL_SLO_AVAILABILITY,
      maxWindowMs: Math.max(1, e.KEEL_SLO_MAX_WINDOW_MS),
    },
    tracing: {
      /** OTLP/HTTP (JSON) traces URL; undefined turns tracing off. The generic endpoint gets the standard /v1/traces path. */
      otlpTracesUrl: e.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? (e.OTEL_EXPORTER_OTLP_ENDPOINT ? `${e.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces` : undefined),
      batchDelayMs: e.OTEL_BSP_SCHEDULE_DELAY,
    },
  };
}

/** KEEL_AGENTS_FILE, else KEEL_TEMPLATE's file (an unknown name fails with the list), else agents/agents.yaml. */
function agentsFileOf(agentsFile: string | undefined, template: string | undefined): string {
  if (agentsFile !== undefined && template !== undefined) {
    throw new Error('Invalid configuration: KEEL_AGENTS_FILE and KEEL_TEMPLATE are both set; set one (KEEL_TEMPLATE=<name> runs agents/templates/<name>.yaml)');
  }
  if (template === undefined) return agentsFile ?? 'agents/agents.yaml';
  try {
    return templateFile(template);
  } catch (error) {
    throw new Error(`Invalid configuration: KEEL_TEMPLATE: ${(error as Error).message}`);
  }
}

const SECRET_PREFIX = 'KEEL_SECRET_';
const SECRET_NAME = /^[A-Z0-9_]{1,64}$/;

/** KEEL_SECRET_<NAME>=value for every NAME of capitals, digits and `_` (at most 64); an empty value is no secret. */
function secretsOf(env: NodeJS.ProcessEnv): Readonly<Record<string, string>> {
  const secrets: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [key, value] of Object.entries(env)) {
    const name = key.startsWith(SECRET_PREFIX) ? key.slice(SECRET_PREFIX.length) : '';
    if (SECRET_NAME.test(name) && value) secrets[name] = value;
  }
  return Object.freeze(secrets);
}

/** Where `npm start` puts its embedded services; `npm run worker` / `npm run api` fall back to them. */
export const EMBEDDED_TEMPORAL_ADDRESS = '127.0.0.1:7233';
export const EMBEDDED_DATABASE_URL = 'postgres://keel:keel@127.0.0.1:5433/keel';

export function temporalAddressOf(settings: Settings): string {
  return settings.temporal.address ?? EMBEDDED_TEMPORAL_ADDRESS;
}

export function databaseUrlOf(settings: Settings): string {
  return settings.databaseUrl ?? EMBEDDED_DATABASE_URL;
}

/**
 * What the escalate activity's startToCloseTimeout must exceed: every attempt's time-out and
 * every back-off wait, plus 15 s for the address checks and the writes.
 */
function escalationActivityTimeoutMs(e: Pick<z.infer<typeof Env>, 'KEEL_ESCALATION_MAX_ATTEMPTS' | 'KEEL_ESCALATION_TIMEOUT_MS' | 'KEEL_ESCALATION_BACKOFF_MS'>): number {
  const attempts = Math.max(1, e.KEEL_ESCALATION_MAX_ATTEMPTS);
  return attempts * Math.max(100, e.KEEL_ESCALATION_TIMEOUT_MS) + e.KEEL_ESCALATION_BACKOFF_MS * (2 ** (attempts - 1) - 1) + 15_000;
}
