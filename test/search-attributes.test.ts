import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { SearchAttributeType } from '@temporalio/common';
import { parse } from 'yaml';
import * as searchAttributes from '../contracts/search-attributes';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../contracts/search-attributes';

/**
 * docker-compose.yml cannot import contracts/search-attributes.ts, so it carries its own copy
 * of the list: this keeps the two equal. No services needed.
 */

/** The CLI matches type names case-insensitively ("Keyword", "KeywordList"); the SDK says KEYWORD, KEYWORD_LIST. */
const typeName = (type: string) => type.replace(/_/g, '').toLowerCase();

interface ComposeService {
  entrypoint?: string[];
  command?: string[];
  depends_on?: Record<string, { condition: string }>;
}

let services: Record<string, ComposeService>;

beforeAll(async () => {
  const text = await readFile(path.join(__dirname, '..', 'docker-compose.yml'), 'utf8');
  services = (parse(text) as { services: Record<string, ComposeService> }).services;
});

test('the contracts list holds every search attribute key the module defines, each once', () => {
  const types: unknown[] = Object.values(SearchAttributeType);
  const isKey = (value: unknown): value is { name: string; type: string } =>
    typeof value === 'object' && value !== null && !Array.isArray(value) && typeof (value as { name?: unknown }).name === 'string' && types.includes((value as { type?: unknown }).type);
  const keys = Object.values(searchAttributes as Record<string, unknown>).filter(isKey);
  expect(keys.length).toBeGreaterThan(0);
  expect([...CUSTOM_SEARCH_ATTRIBUTES].sort((a, b) => a.name.localeCompare(b.name))).toEqual(keys.sort((a, b) => a.name.localeCompare(b.name)));
  expect(new Set(CUSTOM_SEARCH_ATTRIBUTES.map((k) => k.name)).size).toBe(CUSTOM_SEARCH_ATTRIBUTES.length);
});

test('docker-compose.yml registers exactly the contracts list, in one command whose failure shows', () => {
  const service = services['temporal-search-attributes'];
  expect(service?.entrypoint).toEqual(['sh', '-c']);
  expect(service?.command).toHaveLength(1);
  const command = service!.command![0]!;
  // One command: nothing may swallow its exit status or run after it.
  expect(command).not.toMatch(/\|\||&&|;|\||\n/);
  const words = command.trim().split(/\s+/);
  expect(words.slice(0, 4)).toEqual(['temporal', 'operator', 'search-attribute', 'create']);

  const registered: { name: string; type: string }[] = [];
  const options: string[] = [];
  for (let i = 4; i < words.length; i += 2) {
    const [flag, value] = [words[i]!, words[i + 1]];
    expect(value).toBeDefined();
    if (flag === '--name') registered.push({ name: value!, type: '' });
    else if (flag === '--type') {
      // The CLI pairs the n-th --type with the n-th --name.
      const pending = registered.find((r) => r.type === '');
      expect(pending).toBeDefined();
      pending!.type = typeName(value!);
    } else options.push(flag);
  }
  expect(options.sort()).toEqual(['--address', '--namespace']);
  const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name);
  expect(registered.sort(byName)).toEqual(CUSTOM_SEARCH_ATTRIBUTES.map((k) => ({ name: k.name, type: typeName(k.type) })).sort(byName));
});

test('the API and the worker start only after the registration succeeded', () => {
  for (const name of ['api', 'worker']) {
    expect(services[name]?.depends_on?.['temporal-search-attributes']).toEqual({ condition: 'service_completed_successfully' });
  }
});
