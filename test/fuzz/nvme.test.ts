import { smoke } from './smoke.js';

smoke('nvme');
