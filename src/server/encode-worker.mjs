// Entry point of the encoding workers (piscina). Worker threads do not inherit tsx's loader from the main thread
// on Node 20, so this plain-JS file registers it before loading the TypeScript worker.
import { register } from 'tsx/esm/api';

register();
const worker = await import('./encode-worker.ts');
export default worker.default;
