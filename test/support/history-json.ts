import { createRequire } from 'node:module';
import * as proto from '@temporalio/proto';
import { patchProtobufRoot } from '@temporalio/proto/lib/patch-protobuf-root';

/**
 * Workflow histories to and from the SDK's JSON form (proto3 JSON, what `temporal workflow show
 * --output json` writes), for scripts/record-histories.ts and test/replay.test.ts.
 *
 * Not `historyToJSON` / `historyFromJSON` from @temporalio/common, nor a JSON history handed to
 * `Worker.runReplayHistories` (which calls `historyFromJSON`): in this install npm keeps a copy of
 * protobufjs 8 under @temporalio/common and another under @temporalio/proto (the top level has
 * protobufjs 7 for other packages), and common's protojson rejects the message types of proto's
 * copy ("TypeError: type must be a Type"). The protojson of the copy that @temporalio/proto loads
 * accepts them, whatever the layout, so the replay test hands the worker decoded histories.
 */

export type History = proto.temporal.api.history.v1.IHistory;

interface ProtoJson {
  toJson(type: unknown, message: unknown): unknown;
  fromJson(type: unknown, json: unknown, options?: { ignoreUnknownFields?: boolean }): unknown;
}

const protojson = createRequire(require.resolve('@temporalio/proto'))('protobufjs/ext/protojson') as ProtoJson;
const historyType = (patchProtobufRoot(proto as unknown as Record<string, unknown>) as unknown as { lookupType(name: string): unknown }).lookupType('temporal.api.history.v1.History');

/** Indented, with a final newline, so a re-recorded file diffs readably. */
export function historyToJsonText(history: History): string {
  const json = protojson.toJson(historyType, proto.temporal.api.history.v1.History.fromObject(history));
  return `${JSON.stringify(json, null, 2)}\n`;
}

/** Fields a newer server or SDK added are ignored, as the SDK's own parser does. */
export function historyFromJsonText(text: string): proto.temporal.api.history.v1.History {
  const json = JSON.parse(text) as { events?: unknown };
  if (typeof json !== 'object' || json === null || !Array.isArray(json.events) || json.events.length === 0) {
    throw new TypeError('not a workflow history: expected an object with a non-empty "events" array');
  }
  return protojson.fromJson(historyType, json, { ignoreUnknownFields: true }) as proto.temporal.api.history.v1.History;
}

/** The workflow ID a history was recorded under is not in it; session workflows are `session-<sessionId>`, and the ID is in the start input. */
export function sessionWorkflowIdOf(history: History, fallback: string): string {
  const payload = history.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0];
  try {
    const input = JSON.parse(Buffer.from(payload?.data ?? new Uint8Array()).toString('utf8')) as { sessionId?: unknown };
    return typeof input.sessionId === 'string' ? `session-${input.sessionId}` : fallback;
  } catch {
    return fallback;
  }
}
