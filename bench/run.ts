/**
 * Runs every benchmark and prints one table. `npm run bench` (not part of the tests).
 * Set VFU_LIBVFIO_USER_SAMPLES to compare with libvfio-user's gpio sample in the same run.
 */
import { transportBench } from './transport.js';
import { serverBench } from './server.js';
import { nodeFloor } from './node-floor.js';

const n = Number(process.argv[2] ?? 100000);
const t = await transportBench(n);
console.log('== transport (issue #2), CPU 0');
for (const [k, v] of Object.entries(t)) console.log(`${k.padEnd(32)} ${v.toFixed(3)}`);
const f = await nodeFloor(n);
console.log('== the Node.js floor: bare native echo vs C, CPU 0');
for (const [k, v] of Object.entries(f)) console.log(`${k.padEnd(32)} ${v.toFixed(3)}`);
const s = await serverBench(n);
console.log('== server (issue #3), CPU 0');
for (const [k, v] of Object.entries(s)) console.log(`${k.padEnd(32)} ${Number.isInteger(v) ? v : v.toFixed(3)}`);
