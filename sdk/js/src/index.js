// What plugin code imports from `@sluice/plugin-sdk` (types are in index.d.ts).
export { RetryError } from './runtime.js';
