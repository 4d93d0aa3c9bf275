// Entry point of the encoder pool's workers (piscina). Worker threads do not inherit tsx's loader from the main
// thread on Node 20, so this plain-JS file registers it before loading the TypeScript worker.
import { register } from 'tsx/esm/api';

register();
const worker = await import('./pool-worker.ts');
export default worker.default;
