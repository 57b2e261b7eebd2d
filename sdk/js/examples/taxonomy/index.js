// The behaviour of PostHog's Taxonomy plugin: give every custom event name one naming
// convention; PostHog's own events ($...) and its survey events keep theirs. Written for
// sluice's JS SDK.

const SKIPPED = new Set(['survey shown', 'survey sent', 'survey dismissed']);

const JOIN = {
  camelCase: (w) => w.map((x, i) => (i === 0 ? x : x[0].toUpperCase() + x.slice(1))).join(''),
  PascalCase: (w) => w.map((x) => x[0].toUpperCase() + x.slice(1)).join(''),
  snake_case: (w) => w.join('_'),
  'kebab-case': (w) => w.join('-'),
  'spaces in between': (w) => w.join(' '),
};

/** The lowercase words of a name in any of the conventions. */
function words(name) {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .split(/[\s_-]+/)
    .filter((w) => w.length > 0)
    .map((w) => w.toLowerCase());
}

export function processEvent(event, { config, metrics }) {
  if (event.event.startsWith('$') || SKIPPED.has(event.event)) return event;
  const split = words(event.event);
  if (split.length === 0) return event;
  const renamed = JOIN[config.defaultNamingConvention](split);
  if (renamed !== event.event) {
    metrics.increment('renamed');
    event.event = renamed;
  }
  return event;
}
