// Sends events to sluice with the real posthog-node SDK (gzip batches to /batch/ by default).
// usage: node node_client.cjs HOST TOKEN
const { PostHog } = require('posthog-node')

async function main() {
  const [host, token] = process.argv.slice(2)
  const errors = []
  const client = new PostHog(token, { host, flushAt: 20, flushInterval: 0 })
  client.on('error', (error) => errors.push(String(error)))
  client.capture({ distinctId: 'node-user', event: 'node event', properties: { nested: { list: [1, 2] }, n: 1 } })
  client.capture({ distinctId: 'node-user', event: 'node event', properties: { n: 2 } })
  client.identify({ distinctId: 'node-user', properties: { plan: 'pro' } })
  await client.shutdown()
  if (errors.length) {
    console.error('posthog-node reported errors:', errors)
    process.exit(1)
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
