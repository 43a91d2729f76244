import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, httpStatusOf, isRecoverable } from '../contracts/errors';

test('docs/protocol.md lists every error code with its HTTP status and recoverability', () => {
  const doc = readFileSync(path.join(__dirname, '../docs/protocol.md'), 'utf8');
  for (const code of ErrorCode.options) {
    expect(doc).toContain(`| \`${code}\` | ${httpStatusOf(code)} | ${isRecoverable(code) ? 'yes' : 'no'} |`);
  }
});
