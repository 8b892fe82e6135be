// Makes Jazzer.js's prebuilt libFuzzer addon load on an older glibc/libstdc++ (Debian 12:
// glibc 2.36, GCC 12), offline. @jazzer.js/fuzzer 4.x ships only prebuilt binaries (no
// sources); its linux-x64 build was linked against glibc 2.38 and GCC 13's libstdc++ and
// needs exactly three newer symbols, each an exact equivalent of an older one:
//   __isoc23_strtol@GLIBC_2.38            -> strtol@GLIBC_2.2.5   (differs only on "0b" prefixes)
//   __isoc23_strtoul@GLIBC_2.38           -> strtoul@GLIBC_2.2.5
//   std::ios_base_library_init()@3.4.32   -> std::ios_base::Init::Init()@GLIBCXX_3.4 (GCC 13
//                                            defines the former as an alias of the latter)
// This writes a retargeted copy to dist/prebuilds/ (which the addon loader looks in first);
// the package's own file is left untouched. Nothing happens when the prebuild already loads.
// Usage: node scripts/jazzer-prebuild.mjs [--check]   (exit 0: the fuzzer addon loads)
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';

const require = createRequire(import.meta.url);
const RETARGET = [
  ['__isoc23_strtol', 'GLIBC_2.38', 'strtol', 'GLIBC_2.2.5'],
  ['__isoc23_strtoul', 'GLIBC_2.38', 'strtoul', 'GLIBC_2.2.5'],
  ['_ZSt21ios_base_library_initv', 'GLIBCXX_3.4.32', '_ZNSt8ios_base4InitC1Ev', 'GLIBCXX_3.4'],
];

function loads() {
  const r = spawnSync(process.execPath, ['-e', "require('@jazzer.js/fuzzer')"], { encoding: 'utf8' });
  return { ok: r.status === 0, err: r.stderr };
}

/** ELF64 little-endian: retargets undefined dynamic symbols to other names and versions in place. */
function retarget(elf) {
  const b = Buffer.from(elf);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shnum = b.readUInt16LE(0x3c);
  const sections = [];
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * 64;
    sections.push({ type: b.readUInt32LE(o + 4), off: Number(b.readBigUInt64LE(o + 0x18)), size: Number(b.readBigUInt64LE(o + 0x20)), link: b.readUInt32LE(o + 0x28) });
  }
  const dynsym = sections.find((s) => s.type === 11);
  const versym = sections.find((s) => s.type === 0x6fffffff);
  const verneed = sections.find((s) => s.type === 0x6ffffffe);
  if (!dynsym || !versym || !verneed) throw new Error('not a dynamically versioned ELF');
  const dynstr = sections[dynsym.link];
  const str = (off) => {
    const start = dynstr.off + off;
    return b.toString('latin1', start, b.indexOf(0, start));
  };
  // Version needs: name -> { index, aux offset }.
  const versions = new Map();
  for (let vn = verneed.off; ; ) {
    const cnt = b.readUInt16LE(vn + 2);
    let aux = vn + b.readUInt32LE(vn + 8);
    for (let j = 0; j < cnt; j++) {
      versions.set(str(b.readUInt32LE(aux + 8)), { index: b.readUInt16LE(aux + 6), aux });
      aux += b.readUInt32LE(aux + 12);
    }
    const next = b.readUInt32LE(vn + 12);
    if (!next) break;
    vn += next;
  }
  const count = dynsym.size / 24;
  let patched = 0;
  for (const [from, fromVer, to, toVer] of RETARGET) {
    const fv = versions.get(fromVer);
    const tv = versions.get(toVer);
    if (!fv) continue;
    if (!tv) throw new Error(`no version need ${toVer} to retarget ${from} to`);
    for (let i = 0; i < count; i++) {
      const sym = dynsym.off + i * 24;
      if (str(b.readUInt32LE(sym)) !== from || (b.readUInt16LE(versym.off + 2 * i) & 0x7fff) !== fv.index) continue;
      b.write(`${to}\0`, dynstr.off + b.readUInt32LE(sym), 'latin1');
      b.writeUInt16LE(tv.index, versym.off + 2 * i);
      patched++;
    }
  }
  // A version need no symbol uses any more becomes weak: glibc then does not insist on it.
  for (const [, { index, aux }] of versions) {
    let used = false;
    for (let i = 0; i < count && !used; i++) used = (b.readUInt16LE(versym.off + 2 * i) & 0x7fff) === index;
    if (!used) b.writeUInt16LE(b.readUInt16LE(aux + 4) | 0x2, aux + 4);
  }
  return { buf: b, patched };
}

const first = loads();
if (first.ok) process.exit(0);
if (!/GLIBC_2\.38|GLIBCXX_3\.4\.32/.test(first.err)) {
  console.error(`jazzer-prebuild: @jazzer.js/fuzzer does not load, and not for a known reason:\n${first.err}`);
  process.exit(1);
}
if (process.argv.includes('--check')) {
  console.error('jazzer-prebuild: the prebuilt fuzzer addon needs glibc 2.38 / GCC 13 (run node scripts/jazzer-prebuild.mjs)');
  process.exit(1);
}
const pkg = dirname(require.resolve('@jazzer.js/fuzzer/package.json'));
const name = `fuzzer-${process.platform}-${process.arch}.node`;
const src = join(pkg, 'prebuilds', name);
if (process.platform !== 'linux' || process.arch !== 'x64' || !existsSync(src)) {
  console.error(`jazzer-prebuild: no linux-x64 prebuild to retarget (${src})`);
  process.exit(1);
}
const { buf, patched } = retarget(readFileSync(src));
mkdirSync(join(pkg, 'dist', 'prebuilds'), { recursive: true });
writeFileSync(join(pkg, 'dist', 'prebuilds', name), buf);
const after = loads();
if (!after.ok) {
  console.error(`jazzer-prebuild: retargeted ${patched} symbols, still does not load:\n${after.err}`);
  process.exit(1);
}
console.log(`jazzer-prebuild: retargeted ${patched} symbols of ${name} to this system's glibc/libstdc++ (dist/prebuilds/)`);
