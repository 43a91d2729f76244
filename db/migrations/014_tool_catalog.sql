-- Tools that are not compiled into Keel (docs/tools.md): discovered on MCP servers, or generated
-- by an approved OpenAPI import. Agents list them by name like built-in tools; each process loads
-- the rows it needs when an agent version names one it has not seen.
CREATE TABLE tool_catalog (
  name        text PRIMARY KEY,                       -- as agents list it: `server.tool` for MCP
  kind        text NOT NULL CHECK (kind IN ('mcp', 'http')),
  source      text NOT NULL,                          -- the MCP server's name, or the import's ID
  definition  jsonb NOT NULL,                         -- description, parameters, permission, requiresApproval, timeoutMs, maxAttempts, idempotent
  target      jsonb NOT NULL,                         -- how to call it: the MCP server and tool, or the HTTP operation
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_catalog_source ON tool_catalog (source);
