import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setImmediate: 'readonly', URL: 'readonly' },
      // type information for the type-checked rules, from tsconfig.json (which includes every
      // .ts file and the examples)
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
      // node:test's test()/describe() return promises the runner itself awaits
      // async functions without an await are on purpose: a throw becomes a rejection
      '@typescript-eslint/require-await': 'off',
      // rejecting with what was caught (unknown) passes an error on unchanged
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
      '@typescript-eslint/no-floating-promises': ['error', { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'describe', 'it', 'suite', 'before', 'after', 'beforeEach', 'afterEach'] }] }],
    },
  },
  // tests, fuzz targets and benches read JSON from child processes and files: untyped by nature
  {
    files: ['test/**', 'fuzz/**', 'bench/**'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  // build scripts and entry shims outside tsconfig.json: no type information, plain rules
  { files: ['scripts/**', 'bin/**', 'native/**', 'eslint.config.js'], ...tseslint.configs.disableTypeChecked },
);
