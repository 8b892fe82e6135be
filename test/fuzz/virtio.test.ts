import { smoke } from './smoke.js';

smoke('virtio');
