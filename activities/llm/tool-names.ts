import { modelToolName } from '../../contracts/tools';

export { modelToolName };
/**
 * Tool names as the model provider sees them. Keel names MCP tools `<server>.<tool>`, but OpenAI
 * function names must match ^[a-zA-Z0-9_-]{1,64}$: a dot is sent as `__`, and a name the model
 * answers with is read back through the agent's own tool names (an unknown one is kept as is, and
 * found by no policy: TOOL_NOT_FOUND).
 */
/** Reads a model's tool name back to Keel's, for the tools the request offered. */
export function toolNameReader(offered: readonly string[]): (modelName: string) => string {
  const byModelName = new Map(offered.map((name) => [modelToolName(name), name]));
  return (modelName) => byModelName.get(modelName) ?? modelName;
}
