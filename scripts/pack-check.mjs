// The install check: packs the package the way `npm publish` would (in a scratch copy of the
// checkout, so prepack's prebuilds and prepare's tsc run on a clean tree), then, in a scratch
// project on a "machine" with no C compiler and no python3 (CC=/bin/false, PATH holding only
// node, npm and npx), `npm install <tarball>` must use the prebuilt addon, and
// `npx vfio-user serve gpio` + `npx vfio-user info`, an ESM consumer, a CommonJS consumer
// (require of ESM) and a TypeScript consumer must work.
//
// CI runs it (.ci/run) after npm test.
// Usage: node scripts/pack-check.mjs [--tarball=FILE] [--keep]
//   --tarball reuses a packed tarball (or VFU_PACKED_TARBALL); --keep leaves the scratch dirs.
// Prints every command with its output; exits non-zero at the first failure.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { tarball: { type: 'string' }, keep: { type: 'boolean' } } });
const scratch = mkdtempSync(join(tmpdir(), 'vfu-pack-check-'));
const npmCli = join(dirname(dirname(process.execPath)), 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');

function fail(msg) {
  console.log(`FAILED: ${msg}`);
  process.exitCode = 1;
  throw new Error(msg);
}

function run(cmd, args, opts = {}) {
  console.log(`$ ${[...(opts.envShown ?? []), cmd, ...args].join(' ')}`);
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300000, ...opts });
  let lines = `${r.stdout ?? ''}${r.stderr ?? ''}`.trimEnd().split('\n').filter(Boolean);
  if (opts.tail && lines.length > opts.tail) lines = [`... (${lines.length - opts.tail} lines)`, ...lines.slice(-opts.tail)];
  if (!opts.silent && lines.length) console.log(lines.map((l) => `  ${l}`).join('\n'));
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal} ${r.error ?? ''}`);
  return r;
}

try {
  // 1. the tarball
  let tarball = values.tarball ?? process.env.VFU_PACKED_TARBALL;
  if (!tarball) {
    const src = join(scratch, 'checkout');
    const files = spawnSync('git', ['-C', root, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], { encoding: 'utf8' });
    if (files.status !== 0) fail('git ls-files failed (pack-check packs a git checkout; give --tarball=FILE otherwise)');
    for (const f of files.stdout.split('\0').filter(Boolean)) {
      if (!existsSync(join(root, f))) continue; // deleted in the work tree
      mkdirSync(dirname(join(src, f)), { recursive: true });
      cpSync(join(root, f), join(src, f));
    }
    symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
    mkdirSync(join(scratch, 'pack'));
    run(process.execPath, [npmCli, 'pack', '--pack-destination', join(scratch, 'pack')], { cwd: src, tail: 12 });
    tarball = join(scratch, 'pack', readdirSync(join(scratch, 'pack')).find((f) => f.endsWith('.tgz')));
  }
  const list = run('tar', ['-tzf', tarball], { silent: true }).stdout.split('\n');
  for (const must of [`package/prebuilds/linux-${process.arch}/vfio-user.glibc.node`, 'package/dist/src/index.js', 'package/dist/src/index.d.ts', 'package/native/index.cjs', 'package/binding.gyp', 'package/scripts/install.mjs']) {
    if (!list.includes(must)) fail(`the tarball lacks ${must}`);
  }
  if (list.some((f) => /^package\/(src|test|dist\/test|build)\//.test(f))) fail('the tarball holds sources, tests or a local build');
  console.log(`tarball: ${tarball}; prebuilds: ${list.filter((f) => f.startsWith('package/prebuilds/') && f.endsWith('.node')).join(', ')}`);

  // 2. a machine with no C compiler and no python3
  const bin = join(scratch, 'bin');
  mkdirSync(bin);
  symlinkSync(process.execPath, join(bin, 'node'));
  symlinkSync('/bin/sh', join(bin, 'sh')); // npm runs scripts with sh
  symlinkSync(npmCli, join(bin, 'npm'));
  symlinkSync(join(dirname(npmCli), 'npx-cli.js'), join(bin, 'npx'));
  const env = { HOME: process.env.HOME ?? scratch, PATH: bin, CC: '/bin/false', CXX: '/bin/false', npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
  const shown = ['CC=/bin/false', `PATH=${bin}`];
  for (const tool of ['python3', 'python', 'make', 'gcc', 'cc']) {
    if (spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env }).status === 0) fail(`${tool} is still in PATH`);
  }
  const app = join(scratch, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }, null, 2));
  run('npm', ['install', '--prefer-offline', '--foreground-scripts', tarball], { cwd: app, env, envShown: shown });
  const installed = join(app, 'node_modules', 'vfio-user');
  if (existsSync(join(installed, 'build'))) fail('npm install built the addon instead of using the prebuild');

  // the install-time fallback: a prebuild that does not load here (the arm64 one, posing as
  // this machine's) makes install.mjs build, which fails without a compiler, saying why
  if (list.includes('package/prebuilds/linux-arm64/vfio-user.glibc.node')) {
    console.log(`$ ${shown.join(' ')} npm_config_arch=arm64 node node_modules/vfio-user/scripts/install.mjs`);
    const fb = spawnSync('node', [join(installed, 'scripts', 'install.mjs')], { cwd: app, env: { ...env, npm_config_arch: 'arm64' }, encoding: 'utf8', timeout: 120000 });
    const out = `${fb.stdout}${fb.stderr}`;
    console.log(out.trimEnd().split('\n').slice(0, 3).map((l) => `  ${l}`).join('\n') + `\n  ... (exit ${fb.status})`);
    if (fb.status === 0 || !/prebuilds\/linux-arm64\/vfio-user\.glibc\.node does not load here .*; building the native addon/.test(out)) fail('install.mjs did not fall back to a build');
    if (existsSync(join(installed, 'build', 'Release'))) fail('a build appeared without a compiler');
    rmSync(join(installed, 'build'), { recursive: true, force: true });
  }

  // no addon at all: the error names the files looked for and the fix, once prefixed
  const prebuilds = join(installed, 'prebuilds');
  cpSync(prebuilds, join(scratch, 'prebuilds-saved'), { recursive: true });
  rmSync(prebuilds, { recursive: true });
  try {
    const lib = spawnSync('node', ['--input-type=module', '-e', "await import('vfio-user')"], { cwd: app, env, encoding: 'utf8' });
    const cli = spawnSync(join(bin, 'npx'), ['--no-install', 'vfio-user', 'info', '/nonexistent.sock'], { cwd: app, env, encoding: 'utf8' });
    console.log(`$ (prebuilds removed) npx vfio-user info /nonexistent.sock\n  ${cli.stderr.trimEnd()}`);
    for (const [what, r] of [['import', lib], ['cli', cli]]) {
      if (r.status === 0 || !r.stderr.includes(`looked for ${join(installed, 'build', 'Release', 'vfio_user_native.node')}`) || !r.stderr.includes(join(installed, 'prebuilds', `linux-${process.arch}`)) || !r.stderr.includes('npm rebuild vfio-user')) {
        fail(`${what}: the missing-addon error does not say what was looked for and how to fix it: ${r.stderr}`);
      }
    }
    if (!/^vfio-user info: (\[VFU_NATIVE_ADDON\] )?vfio-user native addon not found: looked for /.test(cli.stderr) || /vfio-user: vfio-user/.test(cli.stderr)) fail(`the CLI's missing-addon message: ${cli.stderr}`);
  } finally {
    cpSync(join(scratch, 'prebuilds-saved'), prebuilds, { recursive: true });
  }

  // 3. npx vfio-user serve gpio, described by npx vfio-user info
  const sock = join(scratch, 'gpio.sock');
  console.log(`$ ${shown.join(' ')} npx vfio-user serve gpio --socket-path=${sock} &`);
  const srv = spawn(join(bin, 'npx'), ['--no-install', 'vfio-user', 'serve', 'gpio', `--socket-path=${sock}`], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let srvOut = '';
  srv.stdout.on('data', (d) => (srvOut += d));
  srv.stderr.on('data', (d) => (srvOut += d));
  const exited = new Promise((r) => srv.on('exit', (code, sig) => r(code ?? sig)));
  const deadline = Date.now() + 60000;
  while (!srvOut.includes('"event":"ready"') && srv.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  try {
    if (!srvOut.includes('"event":"ready"')) fail(`serve gpio did not get ready: ${srvOut}`);
    const info = run(join(bin, 'npx'), ['--no-install', 'vfio-user', 'info', sock], { cwd: app, env, envShown: shown });
    if (!/Vendor 494f Device 0dc8/.test(info.stdout)) fail('info did not describe the GPIO card');
  } finally {
    // to the process group, as a terminal's job control would: npx does not pass SIGTERM on
    process.kill(-srv.pid, 'SIGTERM');
    const code = await exited;
    console.log(srvOut.trimEnd().split('\n').map((l) => `  [serve] ${l}`).join('\n'));
    if (code !== 0 && code !== 'SIGTERM') fail(`npx vfio-user serve gpio exited with ${code} on SIGTERM`);
    if (!srvOut.includes('"event":"ready"') || existsSync(sock)) fail('serve left its socket file behind');
  }

  // 4. consumers: ESM, CommonJS (require of ESM), TypeScript
  const consumer = (lang) => `
${lang === 'cjs' ? "const { PciDevice, VfioUserServer, VfioUserClient } = require('vfio-user');" : "import { PciDevice, VfioUserServer, VfioUserClient } from 'vfio-user';"}
${lang === 'ts' ? "import type { RegionAccess } from 'vfio-user';" : ''}
(async () => {
  const dev = new PciDevice({ vendorId: 0x1234, deviceId: 0x${lang === 'ts' ? '0002' : '0001'}, classCode: 0xff0000 });
  const access${lang === 'ts' ? ': RegionAccess' : ''} = { read: (_o${lang === 'ts' ? ': number' : ''}, n${lang === 'ts' ? ': number' : ''}) => new Uint8Array(n).fill(0x5a), write: () => {} };
  dev.addRegion(0, { size: 4096, access });
  const path = process.argv[2]${lang === 'ts' ? '!' : ''};
  const server = new VfioUserServer(dev).listen(path);
  const c = await VfioUserClient.connect(path);
  const b = await c.read(0, 0, 4);
  console.log('${lang} consumer read', Buffer.from(b).toString('hex'));
  c.close();
  server.close();
  dev.destroy();
})();
`;
  writeFileSync(join(app, 'esm.mjs'), consumer('esm'));
  writeFileSync(join(app, 'cjs.cjs'), consumer('cjs'));
  writeFileSync(join(app, 'main.ts'), consumer('ts'));
  // the checkout's TypeScript and Node types (what a consumer has as devDependencies), not a new download
  const typeRoots = [join(root, 'node_modules', '@types')];
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, types: ['node'], typeRoots, outDir: 'out' }, files: ['main.ts'] }, null, 2));
  for (const [file, expect] of [['esm.mjs', 'esm'], ['cjs.cjs', 'cjs']]) {
    const r = run('node', [file, join(scratch, `${expect}.sock`)], { cwd: app, env, envShown: shown });
    if (!r.stdout.includes(`${expect} consumer read 5a5a5a5a`)) fail(`${file} did not read the region`);
  }
  run('node', [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], { cwd: app, env, envShown: shown });
  const ts = run('node', ['out/main.js', join(scratch, 'ts.sock')], { cwd: app, env, envShown: shown });
  if (!ts.stdout.includes('ts consumer read 5a5a5a5a')) fail('the TypeScript consumer did not read the region');
  console.log('pack-check: OK');
} catch (e) {
  if (!process.exitCode) {
    console.log(`FAILED: ${e.stack ?? e}`);
    process.exitCode = 1;
  }
} finally {
  if (values.keep) console.log(`kept ${scratch}`);
  else rmSync(scratch, { recursive: true, force: true });
}
