/**
 * An NVMe controller served in this process over a real socket, with the in-test driver
 * attached (and optionally initialized); images live in a temp directory removed at exit.
 */
import { after } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { NvmeDevice, type NvmeOptions } from '../../src/devices/nvme/index.js';
import { NvmeDriver } from '../../src/testing/index.js';
import { sockPath } from '../helpers.js';

// made at import (top level), so the hook belongs to the whole test file
const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let imageSeq = 0;

/** a fresh image path in this test file's temp directory */
export function imagePath(): string {
  return join(dir, `disk${imageSeq++}.img`);
}

export interface Rig {
  dev: NvmeDevice;
  server: VfioUserServer;
  client: VfioUserClient;
  d: NvmeDriver;
  close(): Promise<void>;
}

export async function rig(
  devOpts: Partial<NvmeOptions> = {},
  drvOpts: Parameters<typeof NvmeDriver.attach>[1] = {},
  init: Parameters<NvmeDriver['init']>[0] | false = {},
  clientOpts: Parameters<typeof VfioUserClient.connect>[1] = {},
): Promise<Rig> {
  const dev = new NvmeDevice({ image: imagePath(), size: 16 << 20, log: () => {}, ...devOpts });
  const server = new VfioUserServer(dev);
  const path = sockPath('nvme');
  server.listen(path);
  const client = await VfioUserClient.connect(path, clientOpts);
  const d = await NvmeDriver.attach(client, drvOpts);
  if (init) await d.init(init);
  return {
    dev,
    server,
    client,
    d,
    close: async () => {
      d.close();
      client.close();
      server.close();
      dev.destroy();
      d.mem.free();
    },
  };
}
