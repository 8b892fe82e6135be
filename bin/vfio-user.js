#!/usr/bin/env node
// The `vfio-user` command (built from src/cli by `npm ci` / `npm run build`).
import '../dist/src/cli/main.js';
