// A JS plugin with the hooks besides `processEvent`, for tests/e2e/js_plugins.rs.
import { RetryError } from '@sluice/plugin-sdk';

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
