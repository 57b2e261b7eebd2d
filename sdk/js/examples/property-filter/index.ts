// The behaviour of PostHog's Property Filter plugin: remove the named properties (nested ones
// by path, `$ip` also from the event itself). Written for sluice's JS SDK.
import type { Meta, PluginEvent } from '@sluice/plugin-sdk';

type Global = { paths: string[][] };

export function setupPlugin({ config, global }: Meta<{ properties: string }, Global>) {
  global.paths = config.properties
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0)
    .map((p) => p.split('.'));
  if (global.paths.length === 0) throw new Error('properties: name at least one property');
}

function remove(object: Record<string, any>, path: string[]): void {
  const [key, ...rest] = path;
  if (object === null || typeof object !== 'object' || !(key in object)) return;
  if (rest.length === 0) delete object[key];
  else remove(object[key], rest);
}

export function processEvent(event: PluginEvent, { global }: Meta<{ properties: string }, Global>) {
  for (const path of global.paths) {
    if (path.length === 1 && path[0] === '$ip') event.ip = null;
    remove(event.properties, path);
  }
  return event;
}
