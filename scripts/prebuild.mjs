// Builds the prebuilt addons shipped in the package (prebuilds/<platform>-<arch>/), run by
// `npm pack` / `npm publish` (prepack). prebuildify names them the way node-gyp-build looks
// for them at run time (N-API, tagged with the libc): prebuilds/linux-x64/vfio-user.napi.glibc.node.
//
// linux-x64 (this machine's arch) is always built; linux-arm64 is cross-built when Debian's
// gcc-aarch64-linux-gnu is installed (a note says so when it is not; VFU_PREBUILD_REQUIRE=arm64
// makes its absence an error, for releases). Like the install-time build, it uses npm's
// node-gyp against this Node's headers (--nodedir via npm_config_nodedir): no download.
// Each build runs in a scratch copy of the sources, so the checkout's build/ is left alone.
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir, arch as hostArch } from 'node:os';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { findNodeGyp, nodePrefix } from './build-native.mjs';

const require = createRequire(import.meta.url);
const prebuildify = require('prebuildify');
const root = join(dirname(new URL(import.meta.url).pathname), '..');
const prefix = nodePrefix();

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

const targets = [{ arch: hostArch(), env: {} }];
const cross = { arm64: 'aarch64-linux-gnu', x64: 'x86_64-linux-gnu' };
const other = hostArch() === 'x64' ? 'arm64' : 'x64';
const triple = cross[other];
const required = (process.env.VFU_PREBUILD_REQUIRE ?? '').split(',').filter(Boolean);
if (triple && has(`${triple}-gcc`)) {
  const cc = `${triple}-gcc`;
  targets.push({ arch: other, stripBin: `${triple}-strip`, env: { CC: cc, CXX: cc, LINK: cc, CC_target: cc, CXX_target: cc } });
} else if (required.includes(other)) {
  console.error(`prebuild: ${triple}-gcc not found, cannot cross-build linux-${other} (apt-get install gcc-${triple})`);
  process.exit(1);
} else {
  console.error(`prebuild: note: no linux-${other} prebuild (${triple}-gcc not installed); that arch builds at install`);
}

rmSync(join(root, 'prebuilds'), { recursive: true, force: true });
for (const t of targets) {
  const work = mkdtempSync(join(tmpdir(), 'vfu-prebuild-'));
  try {
    for (const f of ['binding.gyp', 'package.json', 'native']) cpSync(join(root, f), join(work, f), { recursive: true });
    const saved = { ...process.env };
    Object.assign(process.env, t.env, { npm_config_nodedir: prefix, JOBS: '2' });
    try {
      await new Promise((resolve, reject) =>
        prebuildify(
          { cwd: work, out: root, napi: true, tagLibc: true, strip: true, stripBin: t.stripBin ?? 'strip', arch: t.arch, platform: 'linux', nodeGyp: findNodeGyp(), quiet: !process.env.VFU_PREBUILD_VERBOSE },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    } finally {
      process.env = saved;
    }
  } catch (e) {
    console.error(`prebuild: linux-${t.arch} failed: ${e.message} (VFU_PREBUILD_VERBOSE=1 shows the compiler output)`);
    process.exit(1);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
for (const d of readdirSync(join(root, 'prebuilds'))) {
  for (const f of readdirSync(join(root, 'prebuilds', d))) console.error(`prebuild: prebuilds/${d}/${f} (${statSync(join(root, 'prebuilds', d, f)).size} bytes)`);
}
if (!existsSync(join(root, 'prebuilds', `linux-${hostArch()}`))) process.exit(1);
