import { smoke } from './smoke.js';

smoke('migration');
