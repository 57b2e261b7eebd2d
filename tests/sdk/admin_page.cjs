// Drives sluice's operator page (/admin/) in headless Chromium, as an operator would: logs in
// with the token, waits for the failing installation to be flagged, starts the tap, reloads a
// new config and waits for the new chain, then replays a dead letter. Prints a JSON report; with a folder, leaves
// screenshots of the main views there.
// usage: node admin_page.cjs ADMIN_URL TOKEN NEW_CONFIG FAILING NEW_INSTALLATION [SCREENSHOT_DIR]
const path = require('path')
const { chromium } = require('playwright-core')

const [admin, token, newConfig, failing, added, shots] = process.argv.slice(2)

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  })
  const tab = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  const report = { consoleErrors: [] }
  tab.on('pageerror', (error) => report.consoleErrors.push(String(error)))
  const shot = async (name) => { if (shots) await tab.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true }) }

  await tab.goto(`${admin}/admin/`)
  await tab.fill('#token', 'not-the-token-at-all')
  await tab.click('#login-form button')
  await tab.waitForFunction(() => document.getElementById('login-error').textContent.length > 0)
  report.wrongTokenRefused = await tab.isVisible('#login')
  await shot('login')

  await tab.fill('#token', token)
  await tab.click('#login-form button')
  const box = `[data-installation="${failing}"]`
  await tab.waitForSelector(`${box}[data-state="failing"], ${box}[data-state="open"]`, { timeout: 30000 })
  report.flagged = await tab.getAttribute(box, 'data-state')
  report.summary = await tab.textContent('#summary')
  report.node = await tab.textContent('#node')

  await tab.click('#tap-toggle')
  await tab.waitForFunction(() => document.getElementById('tap').textContent.includes('team-'), null, { timeout: 30000 })
  report.tapped = (await tab.textContent('#tap')).split('\n')[0]
  await shot('console')

  await tab.fill('#reload-path', newConfig)
  await tab.click('#reload-form button')
  await tab.waitForFunction(() => document.getElementById('reload-result').textContent.startsWith('reloaded'), null, { timeout: 60000 })
  await tab.waitForSelector(`[data-installation="${added}"]`, { timeout: 30000 })
  report.reloaded = await tab.textContent('#reload-result')
  report.failingGone = (await tab.$(box)) === null
  report.installations = await tab.$$eval('[data-installation]', (boxes) => boxes.map((b) => b.dataset.installation))
  await shot('reloaded')

  // A dead letter of the removed installation, replayed through the new chain. The page redraws
  // its tables every 2 s, so the button is clicked by a selector (found again if redrawn), never
  // by a handle to an element that may have been replaced.
  const replay = '#dead-letters button[data-action="replay"]'
  await tab.waitForSelector(replay, { timeout: 30000 })
  const uuid = await tab.getAttribute(replay, 'data-uuid')
  await tab.click(`${replay}[data-uuid="${uuid}"]`)
  await tab.waitForFunction((u) => document.getElementById('dead-letters-result').textContent === `replayed ${u}`, uuid, { timeout: 30000 })
  report.replayed = uuid

  // The shadow's difference from the live chain, then its promotion.
  await tab.waitForFunction(() => (document.querySelector('#shadows [data-team="1"]') || {}).textContent?.includes('properties.shadowed'), null, { timeout: 30000 })
  report.shadowed = await tab.textContent('#shadows [data-team="1"]')
  await shot('shadows')
  await tab.click('#shadows button[data-promote]')
  await tab.waitForFunction(() => document.getElementById('shadows-result').textContent.length > 0, null, { timeout: 60000 })
  report.promoted = await tab.textContent('#shadows-result')
  await browser.close()
  console.log(JSON.stringify(report))
}

main().catch((error) => { console.error(error); process.exit(1) })
