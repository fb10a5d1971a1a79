// Drives the VideosDGX web UI in headless Chromium against a running `videosdgx serve`.
// Started by tests/web_e2e.rs, which owns the servers and passes them in the environment:
//   VDGX_BASE         the studio on loopback (no sign-in)
//   VDGX_AUTH_BASE    a second studio that requires sign-in, VDGX_AUTH_TOKEN its access token
//   VDGX_REVIEW_BASE  a third studio with the tiny video model, a tiny language model that sees
//                     images, and a reviewer that never accepts a take (its only enabled one)
//   VDGX_MODELS       the models folder of VDGX_BASE's data directory
//   VDGX_SCREENSHOTS  folder for the screenshots of the main screens
//   VDGX_FIXTURES     folder with an image to upload (reference.png), the planner plugin
//                     (storyboard-planner.wasm, .toml) and the hostile one (hostile.wasm, .toml)
// Exits non-zero with a readable line on the first failed expectation.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const BASE = must('VDGX_BASE');
const SHOTS = must('VDGX_SCREENSHOTS');
const FIXTURES = must('VDGX_FIXTURES');
const STEP_TIMEOUT = 20_000;
const BRIEF = 'a 30-second ad for noise-cancelling headphones, two scenes, one character';
const SCRIPT = `# The Clockmaker's Bird

## INT. CLOCK SHOP - NIGHT

MARA (60s, silver hair in a bun, leather apron) fits a tiny brass gear into a clockwork bird.

## EXT. ROOFTOP - DAWN

WIDE SHOT: Mara lets the clockwork bird go; it lifts off into the sunrise.
`;

function must(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

let current = 'start';

/** Polls `fn` until it returns a truthy value (or the step's timeout passes). */
async function until(fn, timeout = STEP_TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${fn}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
async function step(name, fn) {
  current = name;
  const started = Date.now();
  await fn();
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'vdgx-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.VDGX_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1280, height: 800 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pageErrors = [];
fs.mkdirSync(SHOTS, { recursive: true });

try {
  const page = browser.pages()[0] ?? await browser.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('pageerror', (err) => pageErrors.push(`[${current}] ${err.message}\n${err.stack ?? ''}`));
  const shot = (name) => page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
  const api = async (method, url, body) => {
    const response = await page.request.fetch(BASE + url, { method, data: body });
    assert.ok(response.ok(), `${method} ${url} answered ${response.status()}: ${await response.text()}`);
    return response.status() === 204 ? null : response.json();
  };

  await step('first load stays under 300 KB of JS and CSS, from this server only', async () => {
    const responses = [];
    page.on('response', (r) => responses.push(r));
    await page.goto(BASE);
    await page.getByRole('heading', { name: 'Projects' }).waitFor();
    await page.waitForLoadState('networkidle');
    page.removeAllListeners('response');
    let bytes = 0;
    const foreign = [];
    for (const r of responses) {
      if (!r.url().startsWith(BASE)) foreign.push(r.url());
      if (/\.(js|css)$/.test(new URL(r.url()).pathname)) bytes += (await r.body()).length;
    }
    assert.ok(bytes > 10_000 && bytes < 300_000, `first load fetched ${bytes} bytes of JS and CSS`);
    assert.deepEqual(foreign, [], 'no request may leave the studio server');
  });

  await step('create a project', async () => {
    await page.getByLabel('New project name').fill('Lighthouse keeper');
    await shot('01-projects');
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.waitForURL(/#\/projects\/\d+$/);
    await page.getByRole('heading', { name: 'Lighthouse keeper' }).waitFor();
  });
  const projectId = Number(page.url().match(/projects\/(\d+)/)[1]);
  const [board] = await api('GET', `/api/projects/${projectId}/storyboards`);

  await step('add and edit shots; edits autosave', async () => {
    const prompts = ['A lighthouse on a cliff at dusk, waves below',
      'The keeper climbs the spiral stairs with a lantern',
      'The lamp turns on, a beam sweeps the stormy sea'];
    for (const [i, prompt] of prompts.entries()) {
      await page.getByRole('button', { name: 'Add shot' }).click();
      // The new shot's editor replaces the previous one once the server has created it.
      await page.getByRole('heading', { name: `Shot ${i + 1}`, exact: true }).waitFor();
      await page.locator('#shot-prompt').fill(prompt);
    }
    await page.locator('#shot-negative_prompt').fill('blurry, text');
    await page.locator('#shot-duration_s').fill('2.5');
    await page.locator('#shot-camera').fill('dolly in');
    await page.locator('#shot-transition').selectOption('crossfade');
    await page.getByText('All changes saved').waitFor();
    const shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.deepEqual(shots.map((s) => s.prompt), prompts);
    assert.equal(shots[2].duration_s, 2.5);
    assert.equal(shots[2].camera, 'dolly in');
    assert.equal(shots[2].transition, 'crossfade');
    assert.equal(shots[2].negative_prompt, 'blurry, text');
  });

  await step('reorder shots by dragging and with Alt+Arrow', async () => {
    const before = await api('GET', `/api/storyboards/${board.id}/shots`);
    const cards = page.locator('.timeline .shot-card[data-shot-id]');
    await cards.nth(2).dragTo(cards.nth(0), { targetPosition: { x: 10, y: 40 } });
    await page.waitForFunction(() => document.querySelector('.timeline .shot-card[data-shot-id]')?.textContent.includes('beam'));
    let after = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.deepEqual(after.map((s) => s.id), [before[2].id, before[0].id, before[1].id]);
    await cards.nth(0).focus();
    await page.keyboard.press('Alt+ArrowRight');
    await page.waitForFunction(() => document.querySelectorAll('.timeline .shot-card[data-shot-id]')[1]?.textContent.includes('beam'));
    after = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.deepEqual(after.map((s) => s.id), [before[0].id, before[2].id, before[1].id]);
  });

  await step('duplicate and delete a shot (with confirmation)', async () => {
    await page.locator('.timeline .shot-card[data-shot-id]').nth(0).click();
    await page.getByRole('button', { name: 'Duplicate' }).click();
    await page.getByText('Shot duplicated.').waitFor();
    let shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.equal(shots.length, 4);
    assert.equal(shots[1].prompt, shots[0].prompt);
    await page.locator('#delete-shot').click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await page.waitForFunction(() => document.querySelectorAll('.timeline .shot-card[data-shot-id]').length === 3);
    shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.equal(shots.length, 3);
  });

  await step('an edit made while the server fails is kept as a draft and saved later', async () => {
    await page.locator('.timeline .shot-card[data-shot-id]').nth(0).click();
    await page.route('**/api/shots/*', (route) => (route.request().method() === 'PATCH'
      ? route.fulfill({ status: 503, contentType: 'application/json', body: '{"error":{"code":"unavailable","message":"studio restarting"}}' })
      : route.continue()));
    await page.locator('#shot-prompt').fill('A lighthouse on a cliff at dusk, gulls circling');
    await page.getByText('Saving the shot failed: studio restarting').waitFor();
    await page.reload();
    await page.locator('#shot-prompt').waitFor();
    assert.equal(await page.locator('#shot-prompt').inputValue(), 'A lighthouse on a cliff at dusk, gulls circling',
      'the draft survives a reload');
    await page.unroute('**/api/shots/*');
    await page.getByText('All changes saved').waitFor();
    assert.equal(await page.locator('.toast.error', { hasText: 'Saving the shot failed' }).count(), 0,
      'a later successful save takes the stale failure toast down');
    const shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.equal(shots[0].prompt, 'A lighthouse on a cliff at dusk, gulls circling');
    await shot('02-storyboard');
  });

  await step('upload an asset by drag and drop, then find it by search', async () => {
    await page.goto(`${BASE}/#/assets`);
    await page.getByRole('heading', { name: 'Asset library' }).waitFor();
    await page.getByLabel('Tags for uploads').fill('keeper, portrait');
    await page.getByLabel('Caption for uploads').fill('The keeper in his raincoat');
    const png = fs.readFileSync(path.join(FIXTURES, 'reference.png')).toString('base64');
    const drop = await page.evaluateHandle((b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], 'keeper-portrait.png', { type: 'image/png' }));
      return transfer;
    }, png);
    await page.locator('.dropzone').dispatchEvent('drop', { dataTransfer: drop });
    await page.getByText('Added 1 file to the library.').waitFor();
    await page.getByLabel('Search assets').fill('keeper');
    await page.locator('.asset-tile').first().waitFor();
    await page.getByLabel('Kind').selectOption('video');
    await page.getByText('No assets match.').waitFor();
    await page.getByLabel('Kind').selectOption('image');
    await page.locator('.asset-tile').first().waitFor();
    await shot('03-assets');
  });

  await step('tag and caption an asset', async () => {
    await page.locator('.asset-tile').first().click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Caption').fill('Elias at the lamp room door');
    await dialog.getByLabel('Tags').fill('keeper, elias, reference');
    await shot('04-asset-detail');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await page.getByText('Saved.').waitFor();
    await page.getByLabel('Search assets').fill('elias');
    await page.locator('.asset-tile', { hasText: 'Elias at the lamp room door' }).waitFor();
  });

  await step('attach the asset to a shot as its reference image', async () => {
    await page.goto(`${BASE}/#/projects/${projectId}`);
    await page.locator('.timeline .shot-card[data-shot-id]').nth(1).click();
    await page.locator('#add-reference').click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Search assets').fill('keeper');
    await dialog.locator('.asset-tile').first().click();
    await page.locator('.refs .ref').first().waitFor();
    await page.getByText('All changes saved').waitFor();
    const shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.equal(shots[1].references.length, 1);
  });

  await step('import a LoRA, choose it for the project and turn it down on a shot', async () => {
    await page.goto(`${BASE}/#/assets`);
    await page.getByRole('heading', { name: 'Asset library' }).waitFor();
    const bytes64 = fs.readFileSync(path.join(FIXTURES, 'style.safetensors')).toString('base64');
    const drop = await page.evaluateHandle((b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([bytes], 'canal-style.safetensors'));
      return transfer;
    }, bytes64);
    await page.locator('.dropzone').dispatchEvent('drop', { dataTransfer: drop });
    await page.getByText('Added 1 file to the library.').waitFor();
    await page.getByLabel('Kind').selectOption('lora');
    await page.locator('.asset-tile', { hasText: 'canal-style.safetensors' }).waitFor();
    const [lora] = await api('GET', '/api/assets/search?kind=lora');
    assert.equal(lora.lora.family, 'Wan');

    await page.goto(`${BASE}/#/projects/${projectId}`);
    await page.getByLabel('Add a LoRA to Project LoRAs (every shot)').selectOption(String(lora.id));
    await until(async () => (await api('GET', `/api/projects/${projectId}/loras`)).length === 1);
    await page.locator('.timeline .shot-card[data-shot-id]').nth(0).click();
    const editor = page.locator('.shot-editor');
    await editor.getByLabel(/^Add a LoRA to Shot LoRAs/).selectOption(String(lora.id));
    await editor.getByLabel('Strength of canal-style.safetensors').fill('0.3');
    const shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    const applied = await until(async () => {
      const list = await api('GET', `/api/shots/${shots[0].id}/loras/applied`);
      return list.length === 1 && list[0].strength === 0.3 && list;
    });
    assert.equal(applied[0].from, 'shot', 'the shot\'s choice wins over the project\'s');
    await editor.getByText('Applied to this shot: canal-style.safetensors 0.3 (shot)').waitFor();
    // Left as it was for the steps that follow.
    await api('PUT', `/api/shots/${shots[0].id}/loras`, []);
    await api('PUT', `/api/projects/${projectId}/loras`, []);
  });

  await step('set render settings and the attempt limit, shoot a shot with the tiny model (no reviews without a vision model)', async () => {
    await page.goto(`${BASE}/#/projects/${projectId}`);
    for (const [key, value] of [['width', '32'], ['height', '32'], ['steps', '2'], ['guidance', '3']]) {
      await page.locator(`#render-${key}`).fill(value);
    }
    await page.locator('#render-attention').selectOption('fp8');
    await page.locator('#max-attempts').fill('2');
    await until(async () => {
      const { render } = JSON.parse((await api('GET', `/api/projects/${projectId}/storyboards`))[0].description || '{}');
      return render?.width === 32 && render?.attention === 'fp8';
    });
    await until(async () => (await api('GET', `/api/projects/${projectId}`)).max_attempts === 2);
    await page.locator('.timeline .shot-card[data-shot-id]').nth(0).click();
    await page.locator('#generate').click();
    await page.getByText('Shot 1 queued for generation.').waitFor();
    const job = await until(async () => (await api('GET', '/api/jobs')).find((j) => j.kind === 'shoot'));
    assert.deepEqual(job.params.render, { width: 32, height: 32, steps: 2, guidance: 3, attention: 'fp8' });
    await page.goto(`${BASE}/#/jobs`);
    const card = page.locator(`.job[data-job-id="${job.id}"]`);
    await card.locator('.badge.succeeded').waitFor({ timeout: 180_000 });
    assert.match(await card.locator('.title').textContent(), /Generate & review shot/);
    const done = await api('GET', `/api/jobs/${job.id}`);
    assert.equal(done.result.attempts.length, 1, 'without a vision model the shot is generated once');
    assert.match(done.result.review_note ?? '', /reviews are off/);
    const [first] = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.equal(first.status, 'generated');
    // The page names the studio's one card and the model it kept loaded.
    await page.locator('#cards [data-card="cpu"]', { hasText: 'cpu · tiny-wan-t2v · free' }).waitFor();
    assert.equal(first.takes.length, 1);
    assert.equal(first.chosen_take_id, first.takes[0].id);
    assert.equal(first.takes[0].review, null);
    const generation = await api('GET', `/api/generations/${done.result.attempts[0].generation_id}`);
    assert.equal(generation.params.prompt, first.prompt);
    assert.equal(generation.model, 'tiny-wan-t2v');
    assert.equal(generation.params.attention, undefined, 'float8 attention needs a Hopper GPU: the CPU ran it exactly, and the record says so');
    await page.goto(`${BASE}/#/projects/${projectId}`);
    await page.locator('.timeline .shot-card[data-shot-id]').nth(0).click();
    await page.locator('.take .take-review', { hasText: 'not reviewed' }).waitFor();
    // Only a shot with one before it offers to continue from it.
    assert.equal(await page.locator('#continue-previous').count(), 0);
    await page.locator('.timeline .shot-card[data-shot-id]').nth(1).click();
    await page.getByLabel('Continue from shot 1').waitFor();
    assert.equal(await page.locator('#continue-previous').isChecked(), false);
  });

  await step('play the take in the review screen, seeking over HTTP Range', async () => {
    await page.goto(`${BASE}/#/projects/${projectId}/review`);
    await page.locator('video.player').first().waitFor();
    const duration = await page.evaluate(() => new Promise((resolve, reject) => {
      const video = document.querySelector('video.player');
      const seek = () => {
        video.addEventListener('seeked', () => resolve(video.duration), { once: true });
        video.currentTime = video.duration / 2;
      };
      video.addEventListener('error', () => reject(new Error(`video error ${video.error?.code}`)), { once: true });
      if (video.readyState >= 1) seek(); else video.addEventListener('loadedmetadata', seek, { once: true });
    }));
    const [first] = await api('GET', `/api/storyboards/${board.id}/shots`);
    // Frames are rounded to the model's 4-frame grid, plus one: within 0.2 s of the shot's duration.
    assert.ok(Math.abs(duration - first.duration_s) < 0.2, `a ${first.duration_s} s shot plays for ${duration} s`);
    await shot('06-review');
  });

  await step('finish the stitched piece to 4K24: the finished piece plays in Chromium at 3840x2160', async () => {
    // A one-shot storyboard of its own, generated at the tiny size, so that every shot has a take.
    const own = await api('POST', '/api/projects', { name: 'Finished piece' });
    const ownBoard = await api('POST', `/api/projects/${own.id}/storyboards`, { title: 'Finale' });
    const ownShot = await api('POST', `/api/storyboards/${ownBoard.id}/shots`, { prompt: 'a harbour at dawn', duration_s: 0.5, seed: 3 });
    const generated = await api('POST', '/api/jobs', {
      kind: 'generate', project_id: own.id,
      params: { shot_id: ownShot.id, render: { width: 32, height: 32, steps: 2, guidance: 1 } },
    });
    await until(async () => (await api('GET', `/api/jobs/${generated.id}`)).state === 'succeeded', 180_000);
    await page.goto(`${BASE}/#/projects/${own.id}/review`);
    // The panel names the models a finish uses.
    await page.locator('#finish-models', { hasText: 'RealESRGAN Compact ×2' }).waitFor();
    await page.locator('#finish-models', { hasText: 'RIFE 4.6' }).waitFor();
    await page.locator('#finish-target').selectOption('4k24');
    await page.locator('#finish-piece').check();
    await page.locator('#stitch').click();
    await page.getByText(/finished to 4k@24 \(3840×2160, 24 fps\)/).waitFor({ timeout: 300_000 });
    const stitch = (await api('GET', '/api/jobs')).find((j) => j.kind === 'stitch' && j.project_id === own.id);
    assert.equal(stitch.params.finish, '4k24');
    const frames = stitch.result.finish.frames;
    const played = await page.evaluate(() => new Promise((resolve, reject) => {
      const video = document.querySelector('#final-video');
      const report = () => resolve({ width: video.videoWidth, height: video.videoHeight, duration: video.duration });
      video.addEventListener('error', () => reject(new Error(`video error ${video.error?.code}`)), { once: true });
      if (video.readyState >= 1) report(); else video.addEventListener('loadedmetadata', report, { once: true });
    }));
    assert.deepEqual([played.width, played.height], [3840, 2160]);
    assert.ok(Math.abs(played.duration - frames / 24) < 0.05, `${frames} frames at 24 fps play for ${played.duration} s`);
    // The browser decodes a 4K picture, not only the header: a frame is painted.
    const painted = await page.evaluate(() => new Promise((resolve) => {
      const video = document.querySelector('#final-video');
      video.requestVideoFrameCallback((_, meta) => resolve([meta.width, meta.height]));
      video.muted = true;
      video.play();
    }));
    assert.deepEqual(painted, [3840, 2160]);
    await shot('07-finished-4k');
  });

  await step('the job queue shows a job submitted elsewhere reach its end, live', async () => {
    await page.goto(`${BASE}/#/jobs`);
    await page.getByRole('heading', { name: 'Jobs' }).waitFor();
    await page.waitForTimeout(300); // the event stream is open
    const job = await api('POST', '/api/jobs', { kind: 'assets.reindex', params: {}, project_id: projectId });
    const card = page.locator(`.job[data-job-id="${job.id}"]`);
    await card.locator('.badge.succeeded').waitFor();
    assert.match(await card.locator('.title').textContent(), /Reindex the asset library/);
    await shot('05-jobs');
  });

  await step('a page whose code cannot be fetched says so on the page, with no uncaught error', async () => {
    await page.route('**/app/views/jobs.js', (r) => r.abort());
    await page.goto(`${BASE}/#/jobs`);
    await page.reload();
    await page.getByText(/Opening the page failed/).waitFor();
    await page.unroute('**/app/views/jobs.js');
  });

  await step('delete a project after confirming', async () => {
    await page.goto(`${BASE}/#/`);
    await page.getByLabel('New project name').fill('Scratch');
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.waitForURL(/#\/projects\/\d+$/);
    await page.goto(`${BASE}/#/`);
    const card = page.locator('.project-card', { hasText: 'Scratch' });
    await card.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await card.count(), 1, 'cancel keeps the project');
    await card.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    await page.getByText('Deleted “Scratch”.').waitFor();
    // The list is fetched again after the toast: on a loaded machine it redraws a moment later.
    await card.waitFor({ state: 'detached' });
    assert.equal(await card.count(), 0);
  });

  await step('replace the first-party planner with one installed from its files, refusing the capability it asks for', async () => {
    await page.goto(`${BASE}/#/plugins`);
    await page.getByRole('heading', { name: 'Plugins' }).waitFor();
    await page.locator('tr[data-plugin-id="storyboard-planner"]').getByRole('button', { name: 'Uninstall' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Uninstall' }).click();
    await page.getByText('Uninstalled storyboard-planner.').waitFor();
    await page.locator('#plugin-component').setInputFiles(path.join(FIXTURES, 'storyboard-planner.wasm'));
    await page.locator('#plugin-manifest').setInputFiles(path.join(FIXTURES, 'storyboard-planner.toml'));
    await page.locator('#install-plugin').click();
    const dialog = page.locator('#grant-dialog');
    await dialog.locator('.cap', { hasText: 'text-generation' }).waitFor();
    assert.equal(await dialog.locator('input[type=checkbox]').isChecked(), false, 'nothing is granted by default');
    await shot('07-plugin-grants');
    await dialog.getByRole('button', { name: 'Install with these grants' }).click();
    // Exact: "Uninstalled storyboard-planner." may still be on screen (toasts last 4 s) and
    // contains this text in a case-insensitive substring match.
    await page.getByText('Installed storyboard-planner.', { exact: true }).waitFor();
    await page.locator('tr[data-plugin-id="storyboard-planner"] .cap.refused', { hasText: 'text-generation' }).waitFor();
    const planner = (await api('GET', '/api/plugins')).find((p) => p.id === 'storyboard-planner');
    assert.deepEqual([planner.id, planner.granted, planner.denied], ['storyboard-planner', [], ['text-generation']]);
  });

  await step('plan a script with the planner plugin; its refused call is in the audit log', async () => {
    await page.goto(`${BASE}/#/projects/${projectId}`);
    await page.locator('#script').fill(SCRIPT);
    const [generated] = await api('GET', `/api/storyboards/${board.id}/shots`);
    const takeAsset = generated.takes[0].asset_id;
    await page.locator('#plan').click();
    // The first shot has a take: planning again asks before replacing the shots.
    const dialog = page.getByRole('dialog');
    await dialog.getByText('Some shots already have generated takes').waitFor({ timeout: 60_000 });
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await api('GET', `/api/storyboards/${board.id}/shots`))[0].id, generated.id, 'cancel keeps the shots');
    await page.locator('#plan').click();
    await dialog.getByRole('button', { name: 'Replace shots' }).click();
    await page.getByText('Storyboard planned.').waitFor({ timeout: 60_000 });
    assert.equal((await api('GET', `/api/assets/${takeAsset}`)).id, takeAsset, 'the replaced take stays in the library');
    const shots = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.ok(shots.length >= 2, `the plan has ${shots.length} shots`);
    assert.ok(shots.some((s) => /bird/i.test(s.prompt)), shots.map((s) => s.prompt).join(' | '));
    await page.goto(`${BASE}/#/plugins`);
    await page.locator('.badge.failed', { hasText: 'refused' }).first().waitFor();
    await shot('08-plugins');
  });

  await step('a character\'s looks and a shot\'s keyframe: generate, choose, see; a text-to-video model does not use it', async () => {
    await page.goto(`${BASE}/#/projects/${projectId}`);
    // FLUX.2 takes references of 64 pixels a side or more.
    for (const [key, value] of [['width', '64'], ['height', '64'], ['steps', '2'], ['guidance', '1']]) {
      await page.locator(`#render-${key}`).fill(value);
    }
    await until(async () => JSON.parse((await api('GET', `/api/projects/${projectId}/storyboards`))[0].description || '{}').render?.width === 64);
    await page.reload();
    // The planned bible's one character, Mara (a saved character has a Look area).
    const character = page.locator('.character', { has: page.locator('.looks') });
    await character.first().waitFor();
    assert.equal(await character.count(), 1);
    await character.getByRole('button', { name: 'Generate look' }).click();
    await character.locator('.look').first().waitFor({ timeout: 120_000 });
    await character.getByRole('button', { name: 'Generate another look' }).click();
    await until(async () => (await character.locator('.look').count()) === 2, 120_000);
    await character.locator('.look').nth(1).click();
    await character.locator('.look[aria-pressed="true"]').nth(0).waitFor();
    const looks = await api('GET', `/api/storyboards/${board.id}/looks`);
    assert.deepEqual(looks.map((l) => [l.character_id, l.chosen]), [['mara', false], ['mara', true]]);

    await page.locator('.timeline .shot-card[data-shot-id]').nth(0).click();
    await page.locator('#shot-keyframe_prompt').waitFor();
    assert.match(await page.locator('#shot-keyframe_prompt').inputValue(), /^Still frame|^$/);
    await page.getByText('tiny-wan-t2v is a text-to-video model').waitFor();
    await page.locator('#generate-keyframe').click();
    await page.locator('.keyframe img').waitFor({ timeout: 120_000 });
    assert.equal(await page.locator('#generate-keyframe').textContent(), 'Regenerate keyframe');
    const [first] = await api('GET', `/api/storyboards/${board.id}/shots`);
    assert.ok(first.keyframe_asset_id, 'the shot has its keyframe');
    const job = (await api('GET', '/api/jobs')).find((j) => j.kind === 'keyframe' && j.state === 'succeeded');
    assert.deepEqual(job.result.looks, [looks[1].id], 'the keyframe used the chosen look');
    const generation = await api('GET', `/api/generations/${job.result.generation_id}`);
    assert.equal(generation.model, 'tiny-flux2-klein');
    assert.equal(generation.params.references.length, 1);
    await shot('13-keyframes');

    // Reproduce on the keyframe's job copies its prompt and seed back into the shot.
    await page.locator(`.job[data-job-id="${job.id}"]`).getByRole('button', { name: 'Reproduce' }).click();
    await until(async () => {
      const [again] = await api('GET', `/api/storyboards/${board.id}/shots`);
      return again.keyframe_prompt === generation.params.prompt && again.seed === generation.params.seed;
    });

    await page.locator('#keyframes').selectOption('off');
    await until(async () => (await api('GET', `/api/projects/${projectId}`)).keyframes === false);
  });

  await step('plan from a brief without a language model: the failure is readable and the brief is kept', async () => {
    await page.goto(`${BASE}/#/projects/${projectId}`);
    await page.getByRole('textbox', { name: 'Brief' }).fill(BRIEF);
    await page.getByRole('button', { name: 'Plan from brief' }).click();
    const failure = page.locator('.toast.error', { hasText: 'Planning from the brief failed' });
    await failure.waitFor({ timeout: 60_000 });
    assert.match(await failure.textContent(), /language model/);
    await shot('09-brief-failed');
    await page.reload();
    assert.equal(await page.getByRole('textbox', { name: 'Brief' }).inputValue(), BRIEF, 'the brief survives a reload');
  });

  await step('a plain storyboard description stays out of Look and survives a bible save', async () => {
    const description = 'Spring campaign: a calm ad about green tea';
    const project = await api('POST', '/api/projects', { name: 'Tea ad' });
    const tea = await api('POST', `/api/projects/${project.id}/storyboards`, { title: 'Storyboard' });
    await api('PATCH', `/api/storyboards/${tea.id}`, { description });
    await page.goto(`${BASE}/#/projects/${project.id}`);
    await page.locator('#style-look').waitFor();
    assert.equal(await page.locator('#style-look').inputValue(), '');
    await page.locator('#style-lighting').fill('morning window light');
    await page.getByText('Saved', { exact: true }).waitFor();
    const saved = JSON.parse((await api('GET', `/api/projects/${project.id}/storyboards`))[0].description);
    assert.equal(saved.style.lighting, 'morning window light');
    assert.equal(saved.description, description, 'the description is kept in the bible');
    assert.equal(saved.style.look, '');
    await page.reload();
    await page.locator('#style-look').waitFor();
    assert.equal(await page.locator('#style-look').inputValue(), '');
    assert.equal(await page.locator('#style-lighting').inputValue(), 'morning window light');
    // A distilled schedule: chosen from the studio's presets, it takes over steps and guidance.
    await page.locator('#render-preset').selectOption('wan2.1-distill-4step');
    assert.equal(await page.locator('#render-steps').isDisabled(), true);
    await until(async () => JSON.parse((await api('GET', `/api/projects/${project.id}/storyboards`))[0].description)
      .render?.preset === 'wan2.1-distill-4step');
    await page.reload();
    assert.equal(await page.locator('#render-preset').inputValue(), 'wan2.1-distill-4step');
    // Step caching is saved with the render settings and comes back after a reload.
    await page.locator('#render-cache').selectOption('magcache');
    await until(async () => JSON.parse((await api('GET', `/api/projects/${project.id}/storyboards`))[0].description)
      .render?.cache === 'magcache');
    await page.reload();
    assert.equal(await page.locator('#render-cache').inputValue(), 'magcache');
  });

  await step('markup from a planner, an asset name and a model folder is shown as text; no script runs; layout holds', async () => {
    const component = fs.readFileSync(path.join(FIXTURES, 'hostile.wasm'));
    const manifest = fs.readFileSync(path.join(FIXTURES, 'hostile.toml'));
    const installed = await page.request.post(`${BASE}/api/plugins`, {
      multipart: {
        component: { name: 'hostile.wasm', mimeType: 'application/wasm', buffer: component },
        manifest: { name: 'plugin.toml', mimeType: 'text/plain', buffer: manifest },
      },
    });
    assert.equal(installed.status(), 201, await installed.text());
    const project = await api('POST', '/api/projects', { name: '<img src=x onerror="window.__pwned=\'project\'">' });
    const hostileBoard = await api('POST', `/api/projects/${project.id}/storyboards`, { title: 'Storyboard' });
    const job = await api('POST', '/api/jobs', {
      kind: 'plan', params: { storyboard_id: hostileBoard.id, script: 'markup', plugin: 'hostile' },
    });
    await until(async () => (await api('GET', `/api/jobs/${job.id}`)).state === 'succeeded', 60_000);
    const assetName = '<img src=x onerror="window.__pwned=\'asset\'">.png';
    const uploaded = await page.request.post(
      `${BASE}/api/assets?name=${encodeURIComponent(assetName)}&project_id=${project.id}`,
      { data: fs.readFileSync(path.join(FIXTURES, 'reference.png')), headers: { 'content-type': 'image/png' } });
    assert.equal(uploaded.status(), 201, await uploaded.text());

    const noScriptRan = async (where) => {
      assert.equal(await page.evaluate(() => window.__pwned), undefined, `script ran on ${where}`);
      assert.equal(await page.locator('img[src="x"], a[href^="javascript:"]').count(), 0, `markup became elements on ${where}`);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${where} is ${overflow}px wider than the window`);
    };
    /** Every element whose own text holds `needle` stays inside its parent's box. */
    const staysInside = async (needle, where) => {
      const escapes = await page.evaluate((needle) => {
        const out = [];
        for (const el of document.querySelectorAll('body *')) {
          const own = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.includes(needle));
          const value = (el.value ?? '').includes?.(needle);
          if (!own && !value) continue;
          const box = el.getBoundingClientRect();
          const parent = el.parentElement.getBoundingClientRect();
          if (box.width > 0 && (box.left < parent.left - 1 || box.right > parent.right + 1)) {
            out.push(`${el.tagName}.${el.className} ${Math.round(box.width)}px in ${Math.round(parent.width)}px`);
          }
        }
        return out;
      }, needle);
      assert.deepEqual(escapes, [], `on ${where}, text escapes its box`);
    };

    await page.goto(`${BASE}/#/projects/${project.id}`);
    await page.locator('.shot-card[data-shot-id]').first().waitFor();
    await until(async () => (await page.locator('.shot-card[data-shot-id]').count()) === 2);
    const pageText = await page.locator('body').innerText();
    assert.ok(pageText.includes('onerror="window.__pwned'), 'the markup is shown as text');
    await page.locator('.shot-card[data-shot-id]').first().click();
    await page.locator('#shot-prompt').waitFor();
    assert.match(await page.locator('#shot-prompt').inputValue(), /<img src=x onerror=/);
    await noScriptRan('the storyboard');
    await staysInside('WWWWWWWWWW', 'the storyboard');
    await shot('12-hostile-storyboard');

    await page.goto(`${BASE}/#/assets`);
    await page.getByText(assetName).first().waitFor();
    await noScriptRan('the asset library');
    await staysInside('onerror', 'the asset library');

    await page.goto(`${BASE}/#/jobs`);
    await page.locator('.job').first().waitFor();
    await noScriptRan('the job list');

    // A video model in a folder named with markup (a copy of the tiny one, so the shot's model
    // picker lists it; removed again so that later steps keep a single video model).
    const modelName = '<img src=x onerror="window.__pwned=\'model\'">';
    const modelDir = path.join(must('VDGX_MODELS'), modelName);
    fs.cpSync(path.join(must('VDGX_MODELS'), 'tiny-wan-t2v'), modelDir, { recursive: true });
    await page.goto(`${BASE}/#/projects/${project.id}`);
    await page.locator('.shot-card[data-shot-id]').first().click();
    await page.locator('#models option').first().waitFor({ state: 'attached' });
    const models = await page.locator('#models option').evaluateAll((options) => options.map((o) => o.value));
    assert.ok(models.some((m) => m.includes('onerror="window.__pwned=\'model\'"')), `the markup model is listed: ${models}`);
    await noScriptRan('the shot editor with the model list');
    fs.rmSync(modelDir, { recursive: true });
  });

  if (process.env.VDGX_REVIEW_BASE) {
    const REVIEW = process.env.VDGX_REVIEW_BASE;
    const reviewApi = async (method, url, body) => {
      const response = await page.request.fetch(REVIEW + url, { method, data: body });
      assert.ok(response.ok(), `${method} ${url} answered ${response.status()}: ${await response.text()}`);
      return response.status() === 204 ? null : response.json();
    };
    let shotId;
    let projectId;
    await step('a shot the reviewer never accepts: each take shows its review, the shot needs attention', async () => {
      projectId = (await reviewApi('POST', '/api/projects', { name: 'Reviewed ad' })).id;
      await page.goto(`${REVIEW}/#/projects/${projectId}`);
      for (const [key, value] of [['width', '32'], ['height', '32'], ['steps', '2']]) {
        await page.locator(`#render-${key}`).fill(value);
      }
      await page.locator('#max-attempts').fill('2');
      await until(async () => (await reviewApi('GET', `/api/projects/${projectId}`)).max_attempts === 2);
      await page.getByRole('button', { name: 'Add shot' }).click();
      // The test reviewer's first prompt word picks its behaviour: ask for another take, always.
      await page.locator('#shot-prompt').fill('always-retry a lighthouse at dusk');
      await page.getByText('All changes saved').waitFor();
      await until(async () => JSON.parse((await reviewApi('GET', `/api/projects/${projectId}/storyboards`))[0].description || '{}').render?.width === 32);
      // Every stage line the queue shows, however briefly (the tiny models finish in moments).
      await page.evaluate(() => {
        window.__stages = [];
        const queue = document.querySelector('.queue');
        new MutationObserver(() => queue.querySelectorAll('.job .meta').forEach((m) => window.__stages.push(m.textContent)))
          .observe(queue, { subtree: true, childList: true, characterData: true });
      });
      await page.locator('#generate').click();
      const job = await until(async () => (await reviewApi('GET', '/api/jobs')).find((j) => j.kind === 'shoot'));
      await page.locator(`.queue .job[data-job-id="${job.id}"] .badge.succeeded`).waitFor({ timeout: 180_000 });
      // The project's queue showed the loop's stage as the job reported it.
      const stages = await page.evaluate(() => window.__stages);
      assert.ok(stages.some((t) => /^attempt [12]\/2: /.test(t)), `stages shown: ${[...new Set(stages)]}`);
      // The queue says which card each take was generated on (this studio's one: the CPU).
      const generation = (await reviewApi('GET', '/api/jobs')).find((j) => j.kind === 'generate' && j.project_id === projectId);
      assert.equal(generation.card, 'cpu');
      await page.locator(`.queue .job[data-job-id="${generation.id}"] .meta`, { hasText: 'on cpu' }).waitFor();
      const [board] = await reviewApi('GET', `/api/projects/${projectId}/storyboards`);
      const [reviewed] = await reviewApi('GET', `/api/storyboards/${board.id}/shots`);
      shotId = reviewed.id;
      assert.equal(reviewed.takes.length, 2, 'the attempt limit ends the loop');
      assert.deepEqual(reviewed.takes.map((t) => t.review?.verdict), ['retry', 'retry']);
      assert.match(reviewed.attention ?? '', /^All 2 takes failed review/);
      const takes = page.locator('.take');
      await until(async () => await takes.count() === 2);
      // Each take's review arrives with the take's own refresh: wait for both scores.
      await until(async () => (await page.locator('.take .score').count()) === 2);
      assert.deepEqual(await page.locator('.take .score').allTextContents(), ['0.10', '0.20']);
      assert.deepEqual(await page.locator('.take .badge').allTextContents(), ['retry', 'retry']);
      assert.equal(await page.locator('.take .reasons').first().textContent(), 'never good enough');
      await page.locator('.take-pick[aria-pressed="true"]', { hasText: '✓ chosen' }).waitFor();
      await page.locator('.shot-editor .attention-note', { hasText: 'All 2 takes failed review' }).waitFor();
      await page.locator('.timeline .shot-card.attention .badge.attention').waitFor();
      await page.getByText('1 needs attention').waitFor();
      await shot('10-takes-reviewed');
    });

    await step('review page: the attention badge and sentence; stitching asks first; one click settles the shot', async () => {
      await page.goto(`${REVIEW}/#/projects/${projectId}/review`);
      const article = page.locator(`article[data-shot-id="${shotId}"]`);
      await article.locator('.attention-note', { hasText: 'All 2 takes failed review' }).waitFor();
      assert.deepEqual(await article.locator('.take-line .score').allTextContents(), ['0.10', '0.20']);
      await shot('11-review-attention');
      await page.locator('#stitch').click();
      const dialog = page.getByRole('dialog');
      await dialog.getByText(/Shot 1: All 2 takes failed review/).waitFor();
      await dialog.getByRole('button', { name: 'Cancel' }).click();
      assert.equal((await reviewApi('GET', '/api/jobs')).filter((j) => j.kind === 'stitch').length, 0,
        'cancel stitches nothing');
      // Choosing a take (here with the keyboard) marks it the user's and clears the attention.
      await article.getByRole('button', { name: 'Take 1' }).focus();
      await page.keyboard.press('Enter');
      await until(async () => (await reviewApi('GET', `/api/shots/${shotId}`)).attention === null);
      await article.locator('.attention-note').waitFor({ state: 'detached' });
      const chosen = await reviewApi('GET', `/api/shots/${shotId}`);
      assert.equal(chosen.chosen_by_user, true);
      assert.equal(chosen.chosen_take_id, chosen.takes[0].id);
    });

    await step('a review\'s reasons are shown as text, never as markup', async () => {
      const reasons = '<img src=x onerror="window.__reviewMarkup = 1"> bad <b>frame</b>';
      await page.route('**/api/storyboards/*/shots', async (route) => {
        const shots = await (await route.fetch()).json();
        for (const t of shots[0].takes) if (t.review) t.review.reasons = reasons;
        await route.fulfill({ json: shots });
      });
      await page.reload();
      const shown = page.locator('.take-line .reasons').first();
      await shown.waitFor();
      assert.equal(await shown.textContent(), reasons);
      assert.equal(await page.locator('.take-line .reasons img, .take-line .reasons b').count(), 0);
      assert.equal(await page.evaluate(() => window.__reviewMarkup), undefined);
      await page.unroute('**/api/storyboards/*/shots');
    });
  }

  if (process.env.VDGX_AUTH_BASE) {
    const AUTH = process.env.VDGX_AUTH_BASE;
    await step('a remote studio shows the sign-in page and accepts only its token', async () => {
      const response = await page.goto(`${AUTH}/#/assets`);
      assert.equal(response.status(), 401);
      await page.getByLabel('Access token').fill('vdgx_not-the-token');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByText('that access token is not valid').waitFor();
      await shot('00-sign-in');
      await page.getByLabel('Access token').fill(must('VDGX_AUTH_TOKEN'));
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { name: 'Asset library' }).waitFor();
      const cookies = await browser.cookies(AUTH);
      const session = cookies.find((c) => c.name === 'vdgx_session');
      assert.ok(session?.httpOnly && session.sameSite === 'Strict', 'HttpOnly, SameSite=Strict session cookie');
      // Writes from the signed-in page carry the CSRF token and succeed.
      await page.goto(`${AUTH}/#/`);
      await page.getByLabel('New project name').fill('Remote project');
      await page.getByRole('button', { name: 'Create project' }).click();
      await page.waitForURL(/#\/projects\/\d+$/);
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByLabel('Access token').waitFor();
    });
  }

  assert.deepEqual(pageErrors, [], `the pages threw uncaught errors: ${pageErrors.join(' | ')}`);
  console.log('web e2e: all steps passed');
} catch (err) {
  console.error(`FAILED at step "${current}": ${err.message}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join(' | ')}`);
  try { await browser.pages()[0]?.screenshot({ path: path.join(SHOTS, 'failure.png') }); } catch { /* best effort */ }
  process.exitCode = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
