// Loads posthog-js in headless Chromium against sluice, twice: with its default (gzip)
// compression, then with compression disabled, where requests are plain JSON and the event sent
// by beacon when the page is left is a base64 form. Each visit sends a pageview, a custom event
// and that unload beacon, all with a `visit` property.
// usage: node browser.cjs SLUICE_URL TOKEN
const http = require('http')
const path = require('path')
const fs = require('fs')
const { chromium } = require('playwright-core')

const [sluice, token] = process.argv.slice(2)
const posthogJs = fs.readFileSync(path.join(path.dirname(require.resolve('posthog-js/package.json')), 'dist', 'array.full.js'))

const page = `<!doctype html><html><head><title>sluice</title>
<script src="/posthog.js"></script>
<script>
  const visit = new URLSearchParams(location.search).get('visit')
  posthog.init(${JSON.stringify(token)}, {
    api_host: ${JSON.stringify(sluice)},
    autocapture: false,
    disable_session_recording: true,
    advanced_disable_flags: true,
    request_batching: true,
    persistence: 'memory',
    // Headless Chromium says "HeadlessChrome"; posthog-js would otherwise drop its events as a bot's.
    opt_out_useragent_filter: true,
    disable_compression: visit === 'uncompressed',
    loaded: (ph) => {
      ph.identify('browser-user')
      ph.capture('browser event', { visit, nested: { list: [1, 2] } })
      window.addEventListener('pagehide', () => ph.capture('left page', { visit }, { transport: 'sendBeacon' }))
    },
  })
</script></head><body>sluice</body></html>`

const server = http.createServer((req, res) => {
  if (req.url === '/posthog.js') {
    res.writeHead(200, { 'content-type': 'application/javascript' })
    res.end(posthogJs)
  } else {
    res.writeHead(req.url.startsWith('/page') ? 200 : 404, { 'content-type': 'text/html' })
    res.end(page)
  }
})

async function main() {
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${server.address().port}/page`
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  })
  const tab = await browser.newPage()
  const sent = []
  tab.on('request', (request) => {
    if (request.url().startsWith(sluice)) sent.push(`${request.method()} ${request.url()}`)
  })
  const failures = []
  tab.on('requestfailed', (request) => failures.push(`${request.url()} ${request.failure()?.errorText}`))
  for (const visit of ['default', 'uncompressed']) {
    await tab.goto(`${url}?visit=${visit}`)
    // Let the batched requests (pageview, identify, custom event) go out, then leave the page.
    await tab.waitForFunction(() => window.posthog && window.posthog.__loaded)
    await tab.waitForTimeout(1500)
    await tab.goto('about:blank')
    await tab.waitForTimeout(1000)
  }
  await browser.close()
  server.close()
  console.log(JSON.stringify({ sent, failures }))
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
