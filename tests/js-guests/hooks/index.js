// A JS plugin with every hook, for tests/e2e/js_plugins.rs; its `processEvent` returns events
// changed the ways the runtime must notice.
import { RetryError } from '@sluice/plugin-sdk';

export function processEvent(event) {
  if (event.event === 'rebuild') {
    return { uuid: event.uuid, event: 'rebuilt', distinct_id: event.distinct_id, timestamp: event.timestamp, properties: { only: 1 } };
  }
  if (event.event === 'retime') event.timestamp = '2020-01-01T00:00:00.000Z';
  return event;
}

export async function exportEvents(events, { storage, batch }) {
  await storage.set('last-batch', { id: batch.id, names: events.map((e) => e.event) });
  console.log(`exported ${events.length} events of batch ${batch.id}`);
}

export async function runEveryMinute({ cache, storage }) {
  const ticks = await cache.incr('ticks');
  const last = await storage.get('last-batch', null);
  console.log(`tick ${ticks}; last batch ${last ? last.names.join(',') : 'none'}`);
}

export const jobs = {
  greet: async (payload) => {
    if (payload.fail) throw new RetryError(`cannot greet ${payload.name} yet`);
    console.log(`hello ${payload.name}`);
  },
  chain: async (payload, meta) => {
    const id = await meta.jobs.greet({ name: payload.name }).runIn(1, 'minutes');
    console.log(`queued greet as ${id}`);
  },
  locate: async (payload, meta) => {
    await meta.geoip.locate('89.160.20.112');
  },
};
