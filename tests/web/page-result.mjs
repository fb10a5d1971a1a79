// Opens a local HTML page in headless Chromium and prints what the page reports: the text of
// its #result element, waited for in real time. (Chromium's own --dump-dom with a virtual time
// budget races the media and Web Audio decoding threads, which virtual time does not wait for.)
// Usage: node page-result.mjs PAGE.html; driven by host/engine/tests/browser_playback.rs.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [page_path] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'vdgx-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.VDGX_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update',
    '--allow-file-access-from-files', '--autoplay-policy=no-user-gesture-required'],
});
try {
  const page = browser.pages()[0] ?? await browser.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(pathToFileURL(path.resolve(page_path)).href);
  // Generous: a loaded 2-core machine decodes slowly, and a page that never reports fails here.
  const result = await page.waitForSelector('#result', { state: 'attached', timeout: 60_000 })
    .catch((err) => { throw new Error(`the page never reported (${err.message}); page errors: ${errors.join('; ')}`); });
  process.stdout.write(await result.textContent());
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
