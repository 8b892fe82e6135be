// Builds the native addon with npm's own node-gyp against the installed Node headers.
// Never downloads headers: --nodedir points at this Node's prefix.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';

const prefix = dirname(dirname(process.execPath));
const headers = join(prefix, 'include', 'node', 'node_api.h');
if (!existsSync(headers)) {
  console.error(`build-native: Node headers not found at ${headers}; install Node's development headers`);
  process.exit(1);
}

function findNodeGyp() {
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) {
    return process.env.npm_config_node_gyp;
  }
  const candidates = [
    join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  try {
    const require = createRequire(import.meta.url);
    candidates.unshift(require.resolve('node-gyp/bin/node-gyp.js'));
  } catch { /* not installed locally */ }
  for (const c of candidates) if (existsSync(c)) return c;
  console.error('build-native: node-gyp not found (it ships with npm)');
  process.exit(1);
}

const gyp = findNodeGyp();
const args = [gyp, 'rebuild', `--nodedir=${prefix}`, '--release'];
const jobs = process.env.JOBS ?? '2';
args.push(`--jobs=${jobs}`);
const r = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: join(dirname(new URL(import.meta.url).pathname), '..') });
process.exit(r.status ?? 1);
