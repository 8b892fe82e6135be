/**
 * The published package's documentation: every relative link of README.md, CHANGELOG.md and
 * docs/ leads to a file the package ships (nothing outside it), and the declarations it
 * ships (built with stripInternal) hold together and leave the @internal members out.
 * (`npm run lint` runs TypeDoc, which fails on broken links and documentation warnings.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, normalize, relative } from 'node:path';

const root = new URL('../../../', import.meta.url).pathname; // from dist/test/package
const run = promisify(execFile);

/** files `npm pack` would put in the package (without running prepare) */
async function packedFiles(): Promise<Set<string>> {
  const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, maxBuffer: 16 << 20 });
  const [info] = JSON.parse(stdout) as { files: { path: string }[] }[];
  return new Set(info!.files.map((f) => f.path));
}

/** GitHub's (and TypeDoc's) anchors of a Markdown file's headings. */
function anchors(file: string): Set<string> {
  const text = readFileSync(file, 'utf8').replace(/```[\s\S]*?```/g, '');
  return new Set(
    [...text.matchAll(/^#{1,6} +(.+?) *#*$/gm)].map((m) =>
      m[1]!
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, '')
        .replace(/ /g, '-'),
    ),
  );
}

test('README, CHANGELOG and docs/ link only to files in the package', async () => {
  const files = await packedFiles();
  const docs = ['README.md', 'CHANGELOG.md', ...readdirSync(join(root, 'docs')).map((f) => `docs/${f}`)];
  for (const doc of docs) {
    assert.ok(files.has(doc), `${doc} is in the package`);
    const text = readFileSync(join(root, doc), 'utf8').replace(/```[\s\S]*?```/g, '');
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const href = m[1]!;
      assert.ok(!/^[a-z]+:/i.test(href), `${doc}: ${href} leaves the package`);
      const [path, anchor] = href.split('#') as [string, string | undefined];
      const target = path ? normalize(join(dirname(doc), path)) : doc;
      if (anchor !== undefined) assert.ok(target.endsWith('.md') && anchors(join(root, target)).has(anchor), `${doc}: ${href}: no such heading`);
      if (!path) continue;
      assert.ok(!relative('.', target).startsWith('..'), `${doc}: ${href} is outside the package`);
      assert.ok(existsSync(join(root, target)), `${doc}: ${href} does not exist`);
      assert.ok(files.has(target), `${doc}: ${href} is not in the package files`);
    }
  }
});

test('the published declarations leave @internal out and compile for a strict consumer', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-dts-'));
  try {
    const out = join(dir, 'pkg');
    const tsc = join(root, 'node_modules/typescript/bin/tsc');
    await run(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', out, '--emitDeclarationOnly', '--declarationMap', 'false', '--sourceMap', 'false'], { timeout: 170000 });
    const dts = (p: string): string => readFileSync(join(out, p), 'utf8');
    assert.doesNotMatch(dts('src/server/device.d.ts'), /msixTableDriven|flrRequested|msixAccess/);
    assert.doesNotMatch(dts('src/server/server.d.ts'), /\bsession\b.*Session|sessionEnded|migration: Migration/);
    assert.doesNotMatch(dts('src/client/client.d.ts'), /conn: Connection/);
    assert.doesNotMatch(dts('src/index.d.ts'), /\bSession\b/);
    assert.match(dts('src/server/device.d.ts'), /onAttach/, 'public members stay');
    // a consumer of the package root and the test kit, type-checked against those declarations only
    writeFileSync(
      join(dir, 'consumer.ts'),
      [
        "import { PciDevice, VfioUserClient, IrqIndex, type IrqController } from './pkg/src/index.js';",
        "import { serveDevice, IrqRecorder, GuestRam } from './pkg/src/testing/index.js';",
        "const dev = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0xff0000, irqs: { msix: 1 } });",
        'const irqs: IrqController = dev.irqs;',
        'void irqs;',
        'const h = await serveDevice(dev);',
        'const c: VfioUserClient = h.client;',
        'const ram = await GuestRam.map(c, { size: 1 << 20 });',
        'new IrqRecorder(await c.enableIrqs(IrqIndex.MSIX, 1)).close();',
        'await ram.unmap();',
        'await h.close();',
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { strict: true, noEmit: true, target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', skipLibCheck: false, types: ['node'], typeRoots: [join(root, 'node_modules/@types')] },
        include: ['consumer.ts', 'pkg/**/*.d.ts'],
      }),
    );
    writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
    const r = await run(process.execPath, [tsc, '-p', dir], { timeout: 170000 }).catch((e: unknown) => ({ stdout: typeof e === 'object' && e !== null && 'stdout' in e && typeof e.stdout === 'string' ? e.stdout : String(e) }));
    assert.equal(r.stdout, '', 'no type errors');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
