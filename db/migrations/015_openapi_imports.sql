-- OpenAPI imports (docs/tools.md, "OpenAPI import"): a spec fetched or given, checked, parsed and
-- classified by a workflow, reviewed by an operator, then approved (its tools go into tool_catalog
-- and a new version of the target agent lists them) or discarded.
CREATE TABLE openapi_imports (
  id             text PRIMARY KEY,
  status         text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'fetching', 'validating', 'parsing', 'classifying', 'ready', 'failed', 'approved', 'discarded')),
  source_url     text,                                -- where the spec is fetched from, or NULL when given inline
  spec_text      text,                                -- the spec as given or fetched (parsed again by each step: jsonb would lose its order)
  spec_version   text,                                -- its `openapi` field, once it passed validation
  title          text,                                -- its info.title
  agent_id       text NOT NULL,                       -- the agent that gets the tools
  server_url     text,                                -- used instead of the spec's servers
  auth_secret    text,                                -- KEEL_SECRET_<auth_secret> goes into auth_header; never a credential itself
  auth_header    text,
  tool_prefix    text,                                -- tool names are <prefix>_<operation>
  skipped        jsonb NOT NULL DEFAULT '[]',         -- operations left out, with the reason
  error_code     text,
  error_message  text,
  agent_version  integer,                             -- the version the approval published
  tools          text[],                              -- the tools it generated
  created_by     text NOT NULL,
  decided_by     text,
  decided_at     timestamptz,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CHECK (source_url IS NOT NULL OR spec_text IS NOT NULL)
);
CREATE INDEX openapi_imports_created ON openapi_imports (created_at);

-- One row per operation of an import: what was parsed, how the model (or the fallback) classified
-- it, and what an operator changed. The classification columns stay NULL until it is classified.
CREATE TABLE openapi_classifications (
  import_id           text NOT NULL REFERENCES openapi_imports (id) ON DELETE CASCADE,
  operation_id        text NOT NULL,
  position            integer NOT NULL,                -- order in the spec
  method              text NOT NULL,
  path                text NOT NULL,
  summary             text,
  operation           jsonb NOT NULL,                  -- server, parameters, body, arguments schema (contracts/openapi.ts ParsedOperation)
  access              text CHECK (access IN ('read', 'write')),
  requires_approval   boolean,
  agent_group         text,
  customer_parameters text[],
  idempotent          boolean NOT NULL,
  timeout_ms          integer,
  enabled             boolean NOT NULL DEFAULT true,
  classified_by       text CHECK (classified_by IN ('model', 'fallback')),
  classified_at       timestamptz,
  edited              boolean NOT NULL DEFAULT false,
  edited_by           text,
  edited_at           timestamptz,
  PRIMARY KEY (import_id, operation_id)
);
