// npm's install hook: use the prebuilt addon shipped in the package when one fits this
// machine and loads; otherwise build one (scripts/build-native.mjs: npm's node-gyp with
// --nodedir, no download; needs python3, make and a C compiler).
// A checkout (src/ present) always builds, so a stale prebuild never shadows edited C;
// so does `npm rebuild vfio-user --build-from-source` (npm_config_build_from_source).
import { existsSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const fromSource = existsSync(join(root, 'src')) || /^(1|true)$/.test(process.env.npm_config_build_from_source ?? '');

if (!fromSource) {
  let file;
  try {
    file = require('node-gyp-build').path(root);
    require(file);
    console.log(`vfio-user: using the native addon ${relative(root, file)}`);
    process.exit(0);
  } catch (e) {
    const why = file ? `${relative(root, file)} does not load here (${e.message.split('\n')[0]})` : `no prebuilt addon for ${process.platform}-${process.arch}`;
    console.log(`vfio-user: ${why}; building the native addon`);
  }
}
const r = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs')], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
