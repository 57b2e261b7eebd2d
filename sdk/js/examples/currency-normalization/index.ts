// The behaviour of PostHog's Currency Normalization plugin: add the event's amount converted to
// one currency, rounded to 4 digits. PostHog's read its rates from Open Exchange Rates; this one
// from its config (a JSON table), and counts the currencies it converts in the cache. Written
// for sluice's JS SDK.
import type { Meta, PluginEvent } from '@sluice/plugin-sdk';

type Config = {
  normalizedCurrency: string;
  amountProperty: string;
  currencyProperty: string;
  normalizedAmountProperty: string;
  normalizedCurrencyProperty: string;
  rates: Record<string, number>;
};

export function setupPlugin({ config }: Meta<Config>) {
  if (!(config.normalizedCurrency in config.rates)) {
    throw new Error(`rates: no rate for ${config.normalizedCurrency}, the currency to normalise to`);
  }
}

const round = (n: number) => Math.round(n * 1e4) / 1e4;

export async function processEvent(event: PluginEvent, { config, cache }: Meta<Config>) {
  const amount = Number(event.properties[config.amountProperty]);
  const currency = event.properties[config.currencyProperty];
  if (!Number.isFinite(amount) || typeof currency !== 'string') return event;
  const from = config.rates[currency.toUpperCase()];
  if (from === undefined) {
    console.log(`no rate for ${currency}`);
    return event;
  }
  event.properties[config.normalizedAmountProperty] = round((amount * config.rates[config.normalizedCurrency]) / from);
  event.properties[config.normalizedCurrencyProperty] = config.normalizedCurrency;
  await cache.incr(`converted:${currency.toUpperCase()}`);
  return event;
}
