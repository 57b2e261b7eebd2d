// Types for sluice plugins written in TypeScript, with PostHog's plugin API.

/** An event as `processEvent` sees it (PostHog's `PluginEvent`). */
export interface PluginEvent {
  /** Stable identity; the host refuses a change. */
  uuid: string;
  event: string;
  distinct_id: string;
  /** The host refuses a change. */
  team_id: number;
  ip: string | null;
  /** ISO 8601. */
  timestamp: string;
  properties: Record<string, any>;
  $set?: Record<string, any>;
  $set_once?: Record<string, any>;
}

/** PostHog's `meta.cache`: values are stored as JSON. */
export interface Cache {
  set(key: string, value: unknown, ttlSeconds?: number): Promise<void>;
  get<T = unknown>(key: string, defaultValue?: T): Promise<T>;
  incr(key: string, by?: number): Promise<number>;
  expire(key: string, ttlSeconds: number): Promise<boolean>;
  del(key: string): Promise<boolean>;
  lpush(key: string, values: unknown | unknown[]): Promise<number>;
  lrange<T = unknown>(key: string, start: number, stop: number): Promise<T[]>;
  llen(key: string): Promise<number>;
  lrem(key: string, count: number, value: unknown): Promise<number>;
  lpop<T = unknown>(key: string, count?: number): Promise<T[]>;
}

/** PostHog's `meta.storage`: durable, per installation, values as JSON. */
export interface Storage {
  set(key: string, value: unknown): Promise<void>;
  get<T = unknown>(key: string, defaultValue?: T): Promise<T>;
  del(key: string): Promise<boolean>;
}

/** A MaxMind City record, as PostHog's `meta.geoip.locate` answered. */
export interface City {
  city?: { names: { en: string } };
  country: { names?: { en: string }; iso_code?: string };
  continent: { names?: { en: string }; code?: string };
  postal?: { code: string };
  location: { latitude?: number; longitude?: number; accuracy_radius?: number; time_zone?: string };
  subdivisions: { iso_code?: string; names?: { en: string } }[];
}

export interface Job {
  runNow(): Promise<string>;
  runIn(n: number, unit: 'milliseconds' | 'seconds' | 'minutes' | 'hours' | 'days'): Promise<string>;
  runAt(date: Date | string | number): Promise<string>;
}

/** The `meta` every hook receives. */
export interface Meta<Config = Record<string, any>, Global = Record<string, any>> {
  config: Config;
  global: Global;
  cache: Cache;
  storage: Storage;
  geoip: { locate(ip: string): Promise<City | null> };
  jobs: Record<string, (payload?: unknown) => Job>;
  metrics: { increment(name: string, by?: number): void; record(name: string, value: number): void };
}

/** A failure that may succeed if tried again later. */
export class RetryError extends Error {}
