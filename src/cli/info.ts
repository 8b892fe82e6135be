/**
 * `vfio-user info <socket> [--json]`: what a server offers, printed the way `lspci -vv` would:
 * IDs, class, BARs with sizes and flags, sparse mmap areas, capabilities, IRQs.
 */
import type { VfioUserClient, RegionDescription } from '../client/client.js';
import { connectServer, parseTimeout } from './connect.js';
import { onePositional, parseCommand } from './args.js';
import { UsageError } from './factory.js';
import { decodeConfig, type DecodedConfig } from '../client/pci-decode.js';
import * as P from '../protocol/index.js';

const IRQ_NAMES = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'];
const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'];

export interface DeviceReport {
  socket: string;
  version: { major: number; minor: number };
  capabilities: Record<string, unknown>;
  device: { flags: number; numRegions: number; numIrqs: number };
  config: DecodedConfig;
  configBytes: string;
  regions: (Omit<RegionDescription, 'offset' | 'caps'> & { name: string; offset: string })[];
  irqs: { index: number; name: string; count: number; flags: number; flagNames: string[] }[];
}

export async function collect(c: VfioUserClient, socket: string): Promise<DeviceReport> {
  const di = await c.deviceInfo();
  const regions = await c.regions();
  const cfgRegion = regions.find((r) => r.index === P.PciRegion.CONFIG);
  const cfgSize = cfgRegion && cfgRegion.size > 0 ? Math.min(cfgRegion.size, 4096) : 256;
  const cfg = await c.read(P.PciRegion.CONFIG, 0, cfgSize);
  const irqs = [];
  for (let i = 0; i < di.numIrqs; i++) {
    const ii = await c.irqInfo(i);
    const names: string[] = [];
    if (ii.flags & P.IrqInfoFlags.EVENTFD) names.push('eventfd');
    if (ii.flags & P.IrqInfoFlags.MASKABLE) names.push('maskable');
    if (ii.flags & P.IrqInfoFlags.AUTOMASKED) names.push('automasked');
    if (ii.flags & P.IrqInfoFlags.NORESIZE) names.push('noresize');
    irqs.push({ index: i, name: IRQ_NAMES[i] ?? `IRQ${i}`, count: ii.count, flags: ii.flags, flagNames: names });
  }
  return {
    socket,
    version: c.version,
    capabilities: jsonSafe(P.capabilitiesToJson(c.serverCaps)) as Record<string, unknown>,
    device: { flags: di.flags, numRegions: di.numRegions, numIrqs: di.numIrqs },
    config: decodeConfig(cfg),
    configBytes: Buffer.from(cfg).toString('hex'),
    regions: regions.map(({ caps: _caps, offset, ...r }) => ({ ...r, name: REGION_NAMES[r.index] ?? `region${r.index}`, offset: `0x${offset.toString(16)}` })),
    irqs,
  };
}

/** bigints (pgsizes, u64 capability members) as numbers when exact, else hex strings */
function jsonSafe(v: unknown): unknown {
  if (typeof v === 'bigint') return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : `0x${v.toString(16)}`;
  if (Array.isArray(v)) return v.map(jsonSafe);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, jsonSafe(x)]));
  return v;
}

function hex(n: number, w: number): string {
  return n.toString(16).padStart(w, '0');
}

function size(n: number): string {
  const units = ['', 'K', 'M', 'G', 'T'];
  let u = 0;
  while (n >= 1024 && n % 1024 === 0 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${n}${units[u]}`;
}

export function render(r: DeviceReport): string {
  const c = r.config;
  const lines: string[] = [];
  const cls = c.classCode;
  lines.push(`${r.socket}: vfio-user ${r.version.major}.${r.version.minor} device`);
  lines.push(`\tVendor ${hex(c.vendorId, 4)} Device ${hex(c.deviceId, 4)} (rev ${hex(c.revision, 2)})`);
  lines.push(`\tClass ${hex(cls >> 8, 4)} prog-if ${hex(cls & 0xff, 2)}`);
  lines.push(`\tSubsystem: ${hex(c.subsystemVendorId, 4)}:${hex(c.subsystemId, 4)}`);
  const cmd = c.command;
  const flag = (b: boolean): string => (b ? '+' : '-');
  lines.push(`\tControl: I/O${flag(!!(cmd & 1))} Mem${flag(!!(cmd & 2))} BusMaster${flag(!!(cmd & 4))} SERR${flag(!!(cmd & 0x100))} DisINTx${flag(!!(cmd & 0x400))}`);
  lines.push(`\tStatus: Cap${flag(!!(c.status & 0x10))} INTx${flag(!!(c.status & 0x8))}`);
  if (c.interruptPin) lines.push(`\tInterrupt: pin ${String.fromCharCode(0x40 + c.interruptPin)} routed to IRQ ${c.interruptLine}`);
  for (const reg of r.regions) {
    if (reg.size === 0) continue;
    const bar = reg.index < 6 ? c.bars.find((b) => b.index === reg.index) : undefined;
    let desc: string;
    if (reg.index < 6) {
      const kind = bar?.kind === 'io' ? 'I/O ports' : 'Memory';
      // an unassigned memory BAR reads 0: its type bits (0) mean 32-bit non-prefetchable
      const width = bar?.kind === 'io' ? '' : bar?.kind === 'mem64' ? '64-bit' : '32-bit';
      desc = `Region ${reg.index}: ${kind} [size=${size(reg.size)}]${width ? ` ${width},` : ''}${bar?.kind !== 'io' ? (bar?.prefetchable ? ' prefetchable' : ' non-prefetchable') : ''}`;
    } else if (reg.index === 6) {
      desc = `Expansion ROM [size=${size(reg.size)}]`;
    } else if (reg.index === 7) {
      desc = `Config space [size=${size(reg.size)}]`;
    } else {
      desc = `${reg.name} [size=${size(reg.size)}]`;
    }
    const acc = `${reg.readable ? 'r' : '-'}${reg.writable ? 'w' : '-'}${reg.mappable ? 'm' : '-'}`;
    lines.push(`\t${desc} (${acc})`);
    if (reg.type) lines.push(`\t\tType ${reg.type.type} subtype ${reg.type.subtype}`);
    for (const a of reg.sparseAreas) lines.push(`\t\tSparse mmap area: offset=0x${hex(a.offset, 0)} size=${size(a.size)}`);
  }
  for (const cap of c.capabilities) {
    const f = Object.entries(cap.fields)
      .map(([k, v]) => `${k}=${typeof v === 'boolean' ? (v ? '+' : '-') : v}`)
      .join(' ');
    lines.push(`\tCapabilities: [${hex(cap.offset, cap.extended ? 3 : 2)}${cap.extended ? ' v' + (cap.fields.version ?? 0) : ''}] ${cap.name}${f ? `: ${f}` : ''}`);
  }
  for (const irq of r.irqs) {
    if (irq.count === 0) continue;
    lines.push(`\tIRQ ${irq.name}: count=${irq.count} ${irq.flagNames.join(' ')}`);
  }
  const caps = r.capabilities;
  lines.push(`\tProtocol: ${Object.entries(caps).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(' ')}`);
  return lines.join('\n') + '\n';
}

export async function info(argv: string[]): Promise<number> {
  const usage = 'usage: vfio-user info <socket> [--json] [--timeout=SECONDS (default 10)] [--no-twin-socket]\n';
  const args = parseCommand(argv, usage, true, { json: { type: 'boolean' }, timeout: { type: 'string' }, 'no-twin-socket': { type: 'boolean' } });
  if (!args) return 0;
  const { values, positionals } = args;
  const socket = onePositional(positionals, 'socket');
  if (!socket) throw new UsageError(`no socket given\n${usage}`);
  const timeout = parseTimeout(values.timeout, 10000);
  const c = await connectServer(socket, { twinSocket: !values['no-twin-socket'], timeout });
  try {
    const r = await collect(c, socket);
    process.stdout.write(values.json ? JSON.stringify(r, null, 2) + '\n' : render(r));
  } finally {
    c.close();
  }
  return 0;
}
