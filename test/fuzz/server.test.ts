import { smoke } from './smoke.js';

smoke('server');
