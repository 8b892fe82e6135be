// Builds the native addon with npm's own node-gyp against the installed Node headers.
// Never downloads headers: --nodedir points at this Node's prefix.
// Run directly (npm's install hook through scripts/install.mjs, `npm run build`), or imported
// for its helpers (scripts/prebuild.mjs).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The installation prefix of this Node (its headers are under include/node). */
export function nodePrefix() {
  const prefix = dirname(dirname(process.execPath));
  const headers = join(prefix, 'include', 'node', 'node_api.h');
  if (!existsSync(headers)) {
    console.error(`build-native: Node headers not found at ${headers}; install Node's development headers`);
    process.exit(1);
  }
  return prefix;
}

/** npm's node-gyp (or a local one). */
export function findNodeGyp() {
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) {
    return process.env.npm_config_node_gyp;
  }
  const candidates = [join(dirname(dirname(process.execPath)), 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')];
  try {
    const require = createRequire(import.meta.url);
    candidates.unshift(require.resolve('node-gyp/bin/node-gyp.js'));
  } catch { /* not installed locally */ }
  for (const c of candidates) if (existsSync(c)) return c;
  console.error('build-native: node-gyp not found (it ships with npm)');
  process.exit(1);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const prefix = nodePrefix();
  const args = [findNodeGyp(), 'rebuild', `--nodedir=${prefix}`, '--release', `--jobs=${process.env.JOBS ?? '2'}`];
  const r = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: join(dirname(fileURLToPath(import.meta.url)), '..') });
  process.exit(r.status ?? 1);
}
