import { smoke } from './smoke.js';

smoke('client');
