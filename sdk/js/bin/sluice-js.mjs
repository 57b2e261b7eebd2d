#!/usr/bin/env node
// sluice-js: builds a JavaScript or TypeScript plugin (PostHog's plugin API) into a sluice
// WebAssembly component.
//
//   sluice-js build DIR [--out FILE.wasm]
//
// DIR holds `plugin.json` (name, version, description, config as PostHog wrote it, and
// `capabilities`: the host capabilities the plugin uses) and its code: `main` in plugin.json,
// or `index.ts` / `index.js`. TypeScript is compiled without type checking (run `tsc` for that).
// The component imports exactly the declared capabilities and exports the hooks the module has:
// `processEvent` (transform), `exportEvents` (exporter), `runEveryMinute|Hour|Day` (scheduled),
// `jobs` (jobs). Nothing is downloaded: the engine comes with the npm package.

import { componentize } from '@bytecodealliance/componentize-js';
import { init, parse } from 'es-module-lexer';
import ts from 'typescript';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const CAPABILITIES = {
  log: 'log', metrics: 'metrics', storage: 'storage', cache: 'cache', geoip: 'geoip', http: 'http',
  object_store: 'object-store', jobs: 'job-queue', recordings: 'recordings',
};
const HOST_NAMES = { 'object-store': 'objectStore', 'job-queue': 'jobQueue' };

function fail(message) {
  console.error(`sluice-js: ${message}`);
  process.exit(1);
}

async function manifestOf(dir) {
  const path = join(dir, 'plugin.json');
  let manifest;
  try {
    manifest = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    fail(`${path}: ${e.code === 'ENOENT' ? 'missing' : `not JSON: ${e.message}`}`);
  }
  if (typeof manifest.name !== 'string' || !/^[a-z][a-z0-9-]*$/.test(manifest.name)) {
    fail(`${path}: "name" must be lowercase letters, digits and -, got ${JSON.stringify(manifest.name)}`);
  }
  for (const capability of manifest.capabilities ?? []) {
    if (!(capability in CAPABILITIES)) {
      fail(`${path}: "capabilities" names \`${capability}\`; sluice has ${Object.keys(CAPABILITIES).join(', ')}`);
    }
  }
  return manifest;
}

/** Copies the plugin's sources into `work`, TypeScript compiled to JavaScript. */
/** `code` with imports of `@sluice/plugin-sdk` pointed at the runtime copied into `root`. */
function linked(code, at, root) {
  let path = relative(at, join(root, '.sluice', 'index.js'));
  if (!path.startsWith('.')) path = `./${path}`;
  return code.replace(/(['"])@sluice\/plugin-sdk\1/g, `'${path}'`);
}

async function sources(dir, work, root = work) {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const from = join(dir, entry.name);
    if (entry.name === 'node_modules' || entry.name.startsWith('.')) continue;
    if (entry.isDirectory()) {
      await mkdir(join(work, entry.name), { recursive: true });
      await sources(from, join(work, entry.name), root);
    } else if (/\.m?ts$/.test(entry.name) && !entry.name.endsWith('.d.ts')) {
      const { outputText, diagnostics } = ts.transpileModule(await readFile(from, 'utf8'), {
        fileName: entry.name,
        reportDiagnostics: true,
        compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
      });
      for (const d of diagnostics ?? []) fail(`${from}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
      await writeFile(join(work, entry.name.replace(/ts$/, 'js')), linked(outputText, work, root));
    } else if (/\.m?js$/.test(entry.name)) {
      await writeFile(join(work, entry.name), linked(await readFile(from, 'utf8'), work, root));
    } else if (entry.name.endsWith('.json')) {
      await cp(from, join(work, entry.name));
    }
  }
}

/** The names the module at `path` exports. */
async function exportsOf(path) {
  await init;
  const [, exports] = parse(await readFile(path, 'utf8'));
  return new Set(exports.map((e) => e.n));
}

async function build(dir, out) {
  const manifest = await manifestOf(dir);
  const main = manifest.main ?? ['index.ts', 'index.js', 'index.mjs'].find((f) => existsSync(join(dir, f)));
  if (!main || !existsSync(join(dir, main))) fail(`${dir}: no index.ts or index.js (or "main" in plugin.json)`);
  const work = await mkdtemp(join(tmpdir(), 'sluice-js-'));
  try {
    await sources(dir, work);
    await cp(join(here, '../src'), join(work, '.sluice'), { recursive: true });
    const entry = `./${main.replace(/\.m?ts$/, '.js')}`;
    const names = await exportsOf(join(work, entry));
    const hooks = [
      ['processEvent', 'transform'], ['exportEvents', 'exporter'],
      ['runEveryMinute', 'scheduled'], ['runEveryHour', 'scheduled'], ['runEveryDay', 'scheduled'],
      ['jobs', 'jobs'],
    ].filter(([name]) => names.has(name)).map(([, hook]) => hook);
    const exported = [...new Set(hooks)];
    if (exported.length === 0) {
      fail(`${join(dir, main)} exports none of processEvent, exportEvents, runEveryMinute, runEveryHour, runEveryDay, jobs`);
    }
    const imports = (manifest.capabilities ?? []).map((c) => CAPABILITIES[c]);
    const wit = join(work, '.wit');
    await mkdir(join(wit, 'deps'), { recursive: true });
    await cp(resolve(here, '../../../wit/v1'), join(wit, 'deps', 'plugin'), { recursive: true });
    await writeFile(join(wit, 'world.wit'), [
      'package sluice:js-plugin@1.0.0;',
      '',
      'world plugin {',
      ...imports.map((i) => `  import sluice:plugin/${i}@1.0.0;`),
      '  export sluice:plugin/lifecycle@1.0.0;',
      ...exported.map((e) => `  export sluice:plugin/${e}@1.0.0;`),
      '}',
      '',
    ].join('\n'));
    const host = imports.map((i) => HOST_NAMES[i] ?? i);
    await writeFile(join(work, '.entry.js'), [
      `import * as plugin from '${entry}';`,
      "import { makeExports } from './.sluice/runtime.js';",
      ...imports.map((i, n) => `import * as ${host[n]} from 'sluice:plugin/${i}@1.0.0';`),
      `const built = makeExports(plugin, ${JSON.stringify(manifest)}, { ${host.join(', ')} });`,
      ...['lifecycle', ...exported].map((e) => `export const ${e} = built.${e};`),
      '',
    ].join('\n'));
    const started = Date.now();
    const { component } = await componentize({
      sourcePath: join(work, '.entry.js'),
      witPath: wit,
      worldName: 'sluice:js-plugin/plugin',
      disableFeatures: ['http', 'fetch-event'],
    });
    await mkdir(dirname(out), { recursive: true });
    await writeFile(out, component);
    console.log(`built ${out}: ${manifest.name} (${exported.join(', ')}), ${component.length} bytes in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

const [command, dir, ...rest] = process.argv.slice(2);
if (command !== 'build' || !dir) {
  console.error('usage: sluice-js build DIR [--out FILE.wasm]');
  process.exit(2);
}
const at = rest.indexOf('--out');
const out = resolve(at >= 0 && rest[at + 1] ? rest[at + 1] : join(dir, `${basename(resolve(dir))}.wasm`));
await build(resolve(dir), out);
