import { smoke } from './smoke.js';

smoke('codec');
