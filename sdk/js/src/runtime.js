// What a JavaScript or TypeScript plugin becomes in a sluice component: the contract's exports
// (`lifecycle`, `transform`, `exporter`, `scheduled`, `jobs`) built from a PostHog-style module
// (`setupPlugin`, `processEvent`, `exportEvents`, `runEveryMinute`..., `jobs`), with `meta`
// giving `config`, `global`, `cache`, `storage`, `geoip`, `jobs` and `metrics` over the host's
// capabilities. Events cross as the contract's batches; what `processEvent` changes goes back as
// a patch of the keys it changed (the host applies it natively), so an enrichment never sends
// the whole event back.

import {
  Mode, OutcomeWriter, PatchWriter, Target, applyPatch, encodeEvent, readBatch, uuidBytes, uuidText,
} from './wire.js';

/** A failure that may succeed if tried again later (PostHog's `RetryError`). */
export class RetryError extends Error {
  constructor(message) {
    super(message);
    this.name = 'RetryError';
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What the host's imports throw (a `host-error`), as an `Error`. */
function hostCall(name, call) {
  try {
    return call();
  } catch (e) {
    const error = e && e.payload ? e.payload : e;
    const message = error && error.message ? error.message : String(error);
    const failure = new Error(`${name}: ${message}`);
    failure.kind = error && error.kind;
    throw failure;
  }
}

/** The plugin's failure as the contract's `plugin-error`. */
function pluginError(e) {
  const retryable = e instanceof RetryError || (e && (e.kind === 'unavailable' || e.kind === 'timeout'));
  return { message: e && e.message ? e.message : String(e), retryable: Boolean(retryable) };
}

/** A stand-in for a capability the plugin did not declare: any use says so. */
function undeclared(name) {
  return new Proxy({}, {
    get() {
      throw new Error(`the \`${name}\` capability is not declared: add "${name}" to "capabilities" in plugin.json`);
    },
  });
}

function json(bytes) {
  return bytes === undefined || bytes === null ? undefined : JSON.parse(decoder.decode(bytes));
}

/** PostHog's `meta.cache`, over the host's cache (values as JSON). */
function cacheApi(cache) {
  const call = (f) => Promise.resolve(hostCall('cache', f));
  return {
    set: (key, value, ttlSeconds) => call(() => cache.set(key, encoder.encode(JSON.stringify(value)), ttlSeconds ?? undefined)),
    get: (key, defaultValue = null) => call(() => {
      const value = json(cache.get(key));
      return value === undefined ? defaultValue : value;
    }),
    incr: (key, by = 1) => call(() => Number(cache.increment(key, BigInt(by)))),
    expire: (key, ttlSeconds) => call(() => cache.expire(key, ttlSeconds)),
    del: (key) => call(() => cache.delete(key)),
    lpush: (key, values) => call(() => cache.listPush(key, [].concat(values).map((v) => encoder.encode(JSON.stringify(v))))),
    lrange: (key, start, stop) => call(() => cache.listRange(key, BigInt(start), BigInt(stop)).map(json)),
    llen: (key) => call(() => cache.listLength(key)),
    lrem: (key, count, value) => call(() => cache.listRemove(key, BigInt(count), encoder.encode(JSON.stringify(value)))),
    lpop: (key, count = 1) => call(() => cache.listPop(key, count).map(json)),
  };
}

/** PostHog's `meta.storage`, over the host's storage (values as JSON). */
function storageApi(storage) {
  const call = (f) => Promise.resolve(hostCall('storage', f));
  return {
    set: (key, value) => call(() => storage.set(key, encoder.encode(JSON.stringify(value)))),
    get: (key, defaultValue = null) => call(() => {
      const value = json(storage.get(key));
      return value === undefined ? defaultValue : value;
    }),
    del: (key) => call(() => storage.delete(key)),
  };
}

/** PostHog's `meta.geoip.locate`, answering in the shape of a MaxMind City record. */
function geoipApi(geoip) {
  const names = (name) => (name == null ? undefined : { en: name });
  return {
    locate: (ip) => Promise.resolve(hostCall('geoip', () => {
      const l = geoip.locate(ip);
      if (!l) return null;
      return {
        city: l.cityName == null ? undefined : { names: names(l.cityName) },
        country: { names: names(l.countryName), iso_code: l.countryCode ?? undefined },
        continent: { names: names(l.continentName), code: l.continentCode ?? undefined },
        postal: l.postalCode == null ? undefined : { code: l.postalCode },
        location: {
          latitude: l.latitude ?? undefined,
          longitude: l.longitude ?? undefined,
          accuracy_radius: l.accuracyRadius ?? undefined,
          time_zone: l.timeZone ?? undefined,
        },
        subdivisions: l.subdivisions.map((s) => ({ iso_code: s.code ?? undefined, names: names(s.name) })),
      };
    })),
  };
}

/** PostHog's `meta.jobs.NAME(payload).runNow() / runIn(n, unit) / runAt(date)`. */
function jobsApi(queue, names) {
  const units = { milliseconds: 1, seconds: 1e3, minutes: 6e4, hours: 3.6e6, days: 8.64e7 };
  const jobs = {};
  for (const name of names) {
    jobs[name] = (payload = {}) => {
      const text = JSON.stringify(payload);
      return {
        runNow: () => Promise.resolve(hostCall('jobs', () => queue.enqueue(name, text, 0n))),
        runIn: (n, unit = 'seconds') => {
          const factor = units[String(unit).replace(/s?$/, 's')];
          if (!factor) throw new Error(`runIn: unknown unit \`${unit}\``);
          return Promise.resolve(hostCall('jobs', () => queue.enqueue(name, text, BigInt(Math.round(n * factor)))));
        },
        runAt: (date) => Promise.resolve(hostCall('jobs', () => queue.enqueueAt(name, text, BigInt(new Date(date).getTime())))),
      };
    };
  }
  return jobs;
}

/**
 * The event `processEvent` sees (PostHog's shape), and what finding its changes needs. Its
 * properties are parsed when first read: a plugin that never reads them (a rename, a drop by
 * name) costs neither the parse nor the comparison.
 */
function pluginEvent(raw) {
  const [event, distinctId, ip, properties, set, setOnce] = raw.texts;
  const topSet = set === null ? undefined : JSON.parse(set);
  const topSetOnce = setOnce === null ? undefined : JSON.parse(setOnce);
  const seen = {
    uuid: undefined, event, distinctId, ip, timestamp: undefined, set, setOnce, properties: undefined,
    text: properties, assigned: false,
  };
  if (raw.patch) {
    // Earlier plugins' edits, applied as the host will: the plugin sees the event as it is now.
    const props = JSON.parse(properties);
    seen.ip = applyPatch(props, ip, topSet, topSetOnce, raw.patch);
    seen.text = JSON.stringify(props);
    seen.properties = props;
  }
  const given = { event, distinct_id: distinctId, team_id: raw.teamId, ip: seen.ip };
  // Read when first asked for; an assignment is noted, so an event returned as it was given
  // needs no comparison of these.
  lazy(given, seen, 'uuid', () => uuidText(raw.uuid));
  lazy(given, seen, 'timestamp', () => new Date(raw.timestampMs).toISOString());
  lazy(given, seen, 'properties', () => JSON.parse(seen.text));
  if (topSet !== undefined) given.$set = topSet;
  if (topSetOnce !== undefined) given.$set_once = topSetOnce;
  return { given, seen };
}

/** Makes `object[name]` computed by `read` when first read, the value kept in `seen[name]`. */
function lazy(object, seen, name, read) {
  Object.defineProperty(object, name, {
    get() {
      if (seen[name] === undefined) seen[name] = read();
      return seen[name];
    },
    set(value) {
      seen[name] = value;
      if (name !== 'properties') seen.assigned = true;
    },
    enumerable: true,
    configurable: true,
  });
}

/** What becomes of an event `processEvent` was `given` and returned `result` for. */
function outcome(out, raw, given, seen, result) {
  if (result === null || result === undefined || result === false) {
    out.drop('processEvent returned no event');
    return;
  }
  // The event given back with no uuid or time assigned: those cannot have changed.
  const same = result === given && !seen.assigned;
  const envelopeChanged = result.event !== seen.event || result.distinct_id !== seen.distinctId
    || (!same && (result.timestamp !== new Date(raw.timestampMs).toISOString()
      || result.uuid !== uuidText(raw.uuid)))
    || (result.$set === undefined ? null : JSON.stringify(result.$set)) !== seen.set
    || (result.$set_once === undefined ? null : JSON.stringify(result.$set_once)) !== seen.setOnce;
  // The given event's properties, never read, are unchanged; another object's are its own.
  const untouched = result === given && seen.properties === undefined;
  const properties = untouched ? undefined : (result.properties ?? {});
  if (envelopeChanged) {
    out.replace(encodeEvent({
      uuid: uuidBytes(result.uuid ?? uuidText(raw.uuid)),
      teamId: raw.teamId,
      timestampMs: result.timestamp === undefined ? raw.timestampMs : new Date(result.timestamp).getTime(),
      texts: [
        String(result.event), String(result.distinct_id), result.ip ?? null,
        properties === undefined ? seen.text : JSON.stringify(properties),
        result.$set === undefined ? null : JSON.stringify(result.$set),
        result.$set_once === undefined ? null : JSON.stringify(result.$set_once),
      ],
    }));
    return;
  }
  const patch = new PatchWriter();
  if (properties !== undefined) {
    const before = JSON.parse(seen.text);
    for (const key in properties) {
      const value = properties[key];
      if (value === undefined || value === before[key]) continue;
      if (typeof value !== 'object' || JSON.stringify(value) !== JSON.stringify(before[key])) {
        patch.push(Target.properties, Mode.set, key, value);
      }
    }
    for (const key in before) {
      if (properties[key] === undefined) patch.push(Target.properties, Mode.remove, key);
    }
  }
  const ip = result.ip ?? null;
  if (ip !== (seen.ip ?? null)) {
    if (ip === null) patch.push(Target.ip, Mode.remove, '');
    else patch.push(Target.ip, Mode.set, '', String(ip));
  }
  if (patch.count === 0) out.keep();
  else out.patch(patch.finish());
}

const HOOKS = { runEveryMinute: 'every minute', runEveryHour: 'every hour', runEveryDay: 'every day' };

/** The contract's manifest for `manifest` (from plugin.json) and the hooks `plugin` has. */
export function describe(manifest, plugin) {
  return {
    name: manifest.name,
    version: manifest.version ?? '0.1.0',
    description: manifest.description ?? '',
    config: (manifest.config ?? []).map((field) => ({
      key: field.key,
      description: field.hint ?? field.name ?? field.description ?? '',
      kind: { string: 'text', attachment: 'text', choice: 'choice', json: 'json', number: 'number', integer: 'integer', boolean: 'boolean' }[field.type ?? 'string'] ?? 'text',
      default: field.default === undefined ? undefined : JSON.stringify(field.default),
      required: Boolean(field.required),
      secret: Boolean(field.secret),
      choices: field.choices ?? [],
    })),
    capabilities: manifest.capabilities ?? [],
    stateless: Boolean(manifest.stateless),
    tasks: Object.keys(HOOKS).filter((hook) => typeof plugin[hook] === 'function')
      .map((hook) => ({ name: hook, schedule: HOOKS[hook], description: `${hook} of the plugin` })),
    onError: manifest.onError ?? 'skip',
  };
}

/**
 * The exports of a component made of `plugin` (the author's module), `manifest` (plugin.json)
 * and `host` (the capability imports the manifest declares, by name).
 */
export function makeExports(plugin, manifest, host) {
  const declared = new Set(manifest.capabilities ?? []);
  const jobNames = Object.keys(plugin.jobs ?? {});
  const meta = {
    config: {},
    global: {},
    attachments: {},
    cache: declared.has('cache') ? cacheApi(host.cache) : undeclared('cache'),
    storage: declared.has('storage') ? storageApi(host.storage) : undeclared('storage'),
    geoip: declared.has('geoip') ? geoipApi(host.geoip) : undeclared('geoip'),
    jobs: declared.has('jobs') ? jobsApi(host.jobQueue, jobNames) : undeclared('jobs'),
    metrics: declared.has('metrics')
      ? { increment: (name, by = 1) => host.metrics.counterAdd(name, BigInt(by)), record: (name, v) => host.metrics.histogramRecord(name, v) }
      : undeclared('metrics'),
  };
  const exports = {
    lifecycle: {
      describe: () => describe(manifest, plugin),
      async setup(config) {
        meta.config = JSON.parse(config);
        try {
          if (plugin.setupPlugin) await plugin.setupPlugin(meta);
        } catch (e) {
          throw pluginError(e);
        }
      },
      teardown() {
        if (plugin.teardownPlugin) plugin.teardownPlugin(meta);
      },
    },
  };
  if (typeof plugin.processEvent === 'function') {
    exports.transform = {
      async process(batch) {
        const out = new OutcomeWriter();
        for (const raw of readBatch(batch)) {
          try {
            const { given, seen } = pluginEvent(raw);
            let result = plugin.processEvent(given, meta);
            // Awaiting only a promise: a turn of the engine's job queue per event costs more
            // than the rest of the work on it.
            if (result instanceof Promise) result = await result;
            outcome(out, raw, given, seen, result);
          } catch (e) {
            const error = pluginError(e);
            out.error(error.message, error.retryable);
          }
        }
        return out.finish();
      },
    };
  }
  if (typeof plugin.exportEvents === 'function') {
    exports.exporter = {
      async exportBatch(batch, events) {
        const given = readBatch(events).map((raw) => pluginEvent(raw).given);
        try {
          await plugin.exportEvents(given, { ...meta, batch: { id: batch.id, attempt: batch.attempt } });
        } catch (e) {
          throw pluginError(e);
        }
      },
    };
  }
  if (Object.keys(HOOKS).some((hook) => typeof plugin[hook] === 'function')) {
    exports.scheduled = {
      async run(task) {
        if (typeof plugin[task] !== 'function') throw pluginError(new Error(`no task \`${task}\``));
        try {
          await plugin[task](meta);
        } catch (e) {
          throw pluginError(e);
        }
      },
    };
  }
  if (jobNames.length > 0) {
    exports.jobs = {
      async runJob(job) {
        const run = plugin.jobs[job.name];
        if (!run) throw pluginError(new Error(`no job \`${job.name}\``));
        try {
          await run(JSON.parse(job.payload), meta);
        } catch (e) {
          throw pluginError(e);
        }
      },
    };
  }
  return exports;
}
