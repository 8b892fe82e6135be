'use strict';
/* global require, module, __dirname */
// CommonJS entry for the native addon: a local build (build/Release, made by
// `node scripts/build-native.mjs` at install when no prebuild fits) or a prebuilt one shipped
// in the package (prebuilds/<platform>-<arch>/), found by node-gyp-build. src/native/index.ts
// loads the addon through this file, so where the binary is looked for is known in one place.
/* eslint-disable @typescript-eslint/no-require-imports */
const path = require('node:path');
const os = require('node:os');

const root = path.join(__dirname, '..');
const FIX = 'run `npm rebuild vfio-user` to build it for this machine (needs python3, make and a C compiler)';

function lookedFor() {
  const libc = process.report?.getReport?.().header?.glibcVersionRuntime ? 'glibc' : 'musl';
  return (
    `${path.join(root, 'build', 'Release', 'vfio_user_native.node')} (a local build) and ` +
    `${path.join(root, 'prebuilds', `${os.platform()}-${os.arch()}`, `*.${libc}.node`)} (prebuilt)`
  );
}

let file;
try {
  file = require('node-gyp-build').path(root);
} catch (e) {
  const err = new Error(`vfio-user native addon not found: looked for ${lookedFor()}; ${FIX}`, { cause: e });
  err.code = 'VFU_NATIVE_ADDON';
  throw err;
}
try {
  module.exports = require(file);
} catch (e) {
  const err = new Error(`vfio-user native addon ${file} cannot be loaded (${e.message}); ${FIX}`, { cause: e });
  err.code = 'VFU_NATIVE_ADDON';
  throw err;
}
