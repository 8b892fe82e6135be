'use strict';
/* global require, module */
// CommonJS entry for the compiled addon (built by `node scripts/build-native.mjs` into
// build/Release). src/native/index.ts loads the addon through this file, so the location of
// the binary is known in one place only.
// eslint-disable-next-line @typescript-eslint/no-require-imports
module.exports = require('../build/Release/vfio_user_native.node');
