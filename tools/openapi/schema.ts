import { isObject, resolvePointer, type Json, type JsonObject } from './spec';

/**
 * An OpenAPI schema (3.0's dialect or 3.1's JSON Schema) as the plain JSON Schema a tool's
 * parameters are: local `$ref`s inlined, 3.0's `nullable` and boolean `exclusiveMinimum`
 * rewritten, read-only properties left out (they are never sent), and only the keywords the
 * model and the argument check understand kept. A recursive schema is cut where it recurs.
 */

const COPIED = [
  'type',
  'enum',
  'const',
  'format',
  'minimum',
  'maximum',
  'multipleOf',
  'minLength',
  'maxLength',
  'pattern',
  'minItems',
  'maxItems',
  'uniqueItems',
  'minProperties',
  'maxProperties',
  'description',
  'title',
  'default',
] as const;
const LISTS = ['allOf', 'anyOf', 'oneOf'] as const;
const MAX_DEPTH = 24;
/** Schema nodes one tool's parameters may hold once refs are inlined; past it, subschemas accept anything. */
const MAX_NODES = 4_000;

interface Walk {
  doc: Json;
  refs: string[];
  nodes: number;
}

export function toJsonSchema(doc: Json, schema: Json | undefined): JsonObject {
  return convert({ doc, refs: [], nodes: 0 }, schema, 0);
}

function convert(walk: Walk, schema: Json | undefined, depth: number): JsonObject {
  if (schema === false) return { not: {} };
  if (!isObject(schema)) return {};
  if (++walk.nodes > MAX_NODES || depth > MAX_DEPTH) return { description: 'Too deeply nested to describe here: see the API documentation.' };
  if (typeof schema.$ref === 'string') {
    const ref = schema.$ref;
    if (walk.refs.includes(ref)) return { description: `Recursive (${ref.split('/').pop() ?? ref}): see the API documentation.` };
    walk.refs.push(ref);
    const target = convert(walk, resolvePointer(walk.doc, ref), depth + 1);
    walk.refs.pop();
    // 3.1 lets a $ref carry siblings; a description next to it wins over the target's.
    const { $ref: _ref, ...siblings } = schema;
    return Object.keys(siblings).length > 0 ? { ...target, ...convert(walk, siblings, depth + 1) } : target;
  }
  const out: JsonObject = {};
  for (const key of COPIED) if (schema[key] !== undefined) out[key] = schema[key];
  exclusiveBounds(schema, out);
  if (schema.nullable === true) allowNull(out);
  if (isObject(schema.properties)) {
    const properties: JsonObject = {};
    const readOnly: string[] = [];
    for (const [name, sub] of Object.entries(schema.properties)) {
      if (isObject(sub) && sub.readOnly === true) readOnly.push(name);
      else properties[name] = convert(walk, sub, depth + 1);
    }
    out.properties = properties;
    if (Array.isArray(schema.required)) {
      const required = schema.required.filter((r): r is string => typeof r === 'string' && !readOnly.includes(r));
      if (required.length > 0) out.required = required;
    }
  }
  if (typeof schema.additionalProperties === 'boolean') out.additionalProperties = schema.additionalProperties;
  else if (isObject(schema.additionalProperties)) out.additionalProperties = convert(walk, schema.additionalProperties, depth + 1);
  if (schema.items !== undefined && !Array.isArray(schema.items)) out.items = convert(walk, schema.items, depth + 1);
  for (const key of LISTS) {
    const list = schema[key];
    if (Array.isArray(list) && list.length > 0) out[key] = list.map((sub) => convert(walk, sub, depth + 1));
  }
  if (schema.not !== undefined) out.not = convert(walk, schema.not, depth + 1);
  return out;
}

/** 3.0 spells an exclusive bound `exclusiveMinimum: true` next to `minimum`; JSON Schema puts the number there. */
function exclusiveBounds(schema: JsonObject, out: JsonObject): void {
  for (const [flag, bound] of [
    ['exclusiveMinimum', 'minimum'],
    ['exclusiveMaximum', 'maximum'],
  ] as const) {
    const value = schema[flag];
    if (typeof value === 'number') out[flag] = value;
    else if (value === true && typeof schema[bound] === 'number') {
      out[flag] = schema[bound];
      delete out[bound];
    }
  }
}

function allowNull(out: JsonObject): void {
  if (typeof out.type === 'string') out.type = [out.type, 'null'];
  else if (Array.isArray(out.type) && !out.type.includes('null')) out.type = [...out.type, 'null'];
  if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
}

/** The same schema without `pattern` and `format` (a pattern JavaScript cannot compile). */
export function withoutPatterns(schema: Json): Json {
  if (Array.isArray(schema)) return schema.map(withoutPatterns);
  if (!isObject(schema)) return schema;
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(schema)) {
    if (key === 'pattern' || key === 'format') continue;
    // Property names are data, not keywords: keep a property called "pattern".
    out[key] = key === 'properties' && isObject(value) ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, withoutPatterns(v)])) : withoutPatterns(value);
  }
  return out;
}
