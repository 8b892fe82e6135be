/** The GPIO device as a device module for DeviceThreads (bench/threads.ts). */
import { GpioDevice } from '../src/devices/gpio.js';

export default function create(): GpioDevice {
  return new GpioDevice();
}
