// The console in headless Chromium against a real `wasmwiz serve` (started
// by host/tests/it/console.rs). The scenarios run in order on one tenant:
// each builds on what the one before deployed.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, expect } from '@playwright/test';

const env = process.env;
const TENANT = env.TENANT || 'acme';
const shots = (name) => join(env.SCREENSHOTS, `${name}.png`);

test.describe.configure({ mode: 'serial' });

/// Native dialogs (alert, confirm) and Content-Security-Policy violations
/// mean markup from data was run: the console itself uses neither.
function watchForInjection(page) {
  const seen = [];
  page.on('dialog', async (dialog) => {
    seen.push(`dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  page.on('console', (message) => {
    if (/Content Security Policy/i.test(message.text())) seen.push(`csp: ${message.text()}`);
  });
  page.on('pageerror', (error) => seen.push(`page error: ${error.message}`));
  return seen;
}

async function signIn(page, key) {
  await page.goto('/console');
  await page.locator('#key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByTestId('tenant')).toBeVisible();
}

/// The API as a test client, for what a tenant does outside the console.
async function apiCall(request, method, path, key, data) {
  const response = await request.fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key}` },
    data,
  });
  return { status: response.status(), body: await response.json().catch(() => null) };
}

/// Tenants' routes answer on the serving listener (SERVING_BASE), never on
/// the console's own origin (CONSOLE_BASE).
async function invoke(request, path) {
  const url = path.startsWith('http') ? path : `${env.SERVING_BASE}${path}`;
  const response = await request.get(url);
  return { status: response.status(), text: await response.text() };
}

test('sign in: a malformed key is refused in words; the keyboard alone signs in', async ({ page }) => {
  const injected = watchForInjection(page);
  await page.goto('/console');
  await expect(page.getByRole('button', { name: 'Sign in' })).toBeVisible();
  await page.screenshot({ path: shots('signin') });
  // The field has the focus: type a bad key, Enter.
  await page.keyboard.type('not-a-key');
  await page.keyboard.press('Enter');
  await expect(page.getByRole('alert')).toContainText('That is not an API key');
  await page.locator('#key').fill('');
  await page.locator('#key').focus();
  await page.keyboard.type(env.TENANT_KEY);
  await page.keyboard.press('Enter');
  await expect(page.getByTestId('tenant')).toHaveText(TENANT);
  await expect(page.getByText('No deployments yet')).toBeVisible();
  // The key is in session storage, nowhere in the URL or a cookie.
  expect(page.url()).not.toContain(env.TENANT_KEY);
  expect(await page.context().cookies()).toHaveLength(0);
  expect(await page.evaluate(() => sessionStorage.getItem('wasmwiz.key'))).toBe(env.TENANT_KEY);
  // Sign out forgets it.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page.getByRole('button', { name: 'Sign in' })).toBeVisible();
  expect(await page.evaluate(() => sessionStorage.getItem('wasmwiz.key'))).toBeNull();
  expect(injected).toEqual([]);
});

test('deploy: upload hello with a progress bar, then invoke it', async ({ page, request }) => {
  const injected = watchForInjection(page);
  await signIn(page, env.TENANT_KEY);
  await page.getByRole('link', { name: 'Deploy', exact: true }).first().click();
  await page.locator('#file').setInputFiles(env.HELLO_WASM);
  await expect(page.getByTestId('chosen')).toContainText('hello.wasm');
  await expect(page.locator('#route')).toHaveValue(`/${TENANT}/hello/...`);
  // Loopback is too fast to see a bar move: the upload is throttled.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const size = readFileSync(env.HELLO_WASM).length;
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: Math.max(16 * 1024, size / 3),
  });
  await page.getByRole('button', { name: 'Upload and deploy' }).click();
  await expect(page.getByTestId('progress')).toBeVisible();
  await page.waitForFunction(() => {
    const bar = document.getElementById('progress');
    return bar.value > 0 && bar.value < 100;
  }, null, { polling: 'raf', timeout: 15_000 });
  await expect(page.getByText(/Uploading… .* of /)).toBeVisible();
  await page.screenshot({ path: shots('deploy-progress') });
  await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
  const done = page.getByTestId('deployed');
  await expect(done).toContainText(`/${TENANT}/hello/... is live at v1`);
  await expect(done).toContainText(/Compiled in [\d,]+ ms/);
  await expect(page.locator('#progress')).toHaveJSProperty('value', 100);
  await page.screenshot({ path: shots('deploy'), fullPage: true });
  const url = await done.getByTestId('invoke-url').textContent();
  expect(url).toBe(`${env.SERVING_BASE}/${TENANT}/hello/`);
  const answer = await invoke(request, url);
  expect(answer).toEqual({ status: 200, text: 'Hello, world!\n' });
  // The deployments page lists it, with its URL to copy.
  await page.getByRole('link', { name: 'Deployments' }).click();
  const row = page.locator(`tr[data-route="/${TENANT}/hello/..."]`);
  await expect(row).toContainText('v1');
  await expect(row).toContainText('hello');
  await expect(row.getByRole('button', { name: /^Copy URL/ })).toBeVisible();
  await page.screenshot({ path: shots('deployments') });
  expect(injected).toEqual([]);
});

test('deploy: refusals are shown in words', async ({ page }) => {
  await signIn(page, env.TENANT_KEY);
  await page.goto('/console#/deploy');
  const refuse = async (file, route) => {
    await page.locator('#file').setInputFiles(file);
    await page.locator('#route').fill(route);
    await page.getByRole('button', { name: 'Upload and deploy' }).click();
    const alert = page.getByRole('alert');
    await expect(alert).toBeVisible();
    return (await alert.textContent()).trim();
  };
  // Not WebAssembly at all: 400.
  const notWasm = await refuse({ name: 'notes.wasm', mimeType: 'application/wasm', buffer: Buffer.from('these are not the bytes you want') }, `/${TENANT}/x/...`);
  expect(notWasm).toMatch(/^Refused: .*WebAssembly/);
  // An import outside the allowed worlds: 422, naming it.
  const badImport = await refuse(env.BAD_IMPORT_WASM, `/${TENANT}/bad/...`);
  expect(badImport).toMatch(/^This component cannot run here: .*import/);
  // A route of another tenant's: 403, saying so.
  const other = await refuse(env.HELLO_WASM, '/someone-else/app/...');
  expect(other).toMatch(/^Not allowed: /);
  // Over the tier's component size: stopped before the upload.
  const tiers = await page.evaluate(async (key) => (await fetch('/api/v1/tiers', { headers: { Authorization: `Bearer ${key}` } })).json(), env.TENANT_KEY);
  const me = await page.evaluate(async (key) => (await fetch('/api/v1/me', { headers: { Authorization: `Bearer ${key}` } })).json(), env.TENANT_KEY);
  const limit = tiers.find((t) => t.name === me.tier).max_component_bytes;
  const big = await refuse({ name: 'big.wasm', mimeType: 'application/wasm', buffer: Buffer.alloc(limit + 1) }, `/${TENANT}/big/...`);
  expect(big).toMatch(/^Too large: /);
  expect(big).toContain(me.tier);
});

test('usage: invoking raises the chart, with the quota drawn', async ({ page, request }) => {
  await signIn(page, env.TENANT_KEY);
  await page.goto('/console#/usage');
  const summary = page.getByTestId('minute-summary');
  await expect(summary).toBeVisible();
  const before = Number((await summary.textContent()).match(/^([\d,]+) invocations/)[1].replace(/,/g, ''));
  for (let i = 0; i < 4; i += 1) {
    expect((await invoke(request, `/${TENANT}/hello/`)).status).toBe(200);
  }
  // The page refreshes itself every 5 s.
  await expect(summary).toContainText(`${before + 4} invocations`, { timeout: 20_000 });
  const invocationsChart = page.locator('svg[aria-label="Invocations per minute"]');
  // The 4 invocations are in the last minute's bar, or the last two's when
  // a minute turned while they were made or before the page refreshed.
  const totals = await invocationsChart.locator('g[data-total]')
    .evaluateAll((bars) => bars.map((bar) => Number(bar.getAttribute('data-total'))));
  expect(totals.slice(-2).reduce((sum, n) => sum + n, 0)).toBeGreaterThanOrEqual(4);
  await expect(invocationsChart.locator('[data-quota]')).toHaveCount(1);
  await expect(page.locator('svg[aria-label="Invocations per day"] [data-quota]')).toHaveCount(1);
  await expect(page.getByTestId('window-this-minute')).toContainText('left');
  await page.screenshot({ path: shots('usage'), fullPage: true });
});

test('versions: deploy a second version, see the history, roll back in one click', async ({ page, request }) => {
  await signIn(page, env.TENANT_KEY);
  await page.goto('/console#/deploy');
  await page.locator('#file').setInputFiles(env.GREETING_WASM);
  await page.locator('#route').fill(`/${TENANT}/hello/...`);
  await page.locator('#config').fill('greeting=Hi\nname=console');
  await page.getByRole('button', { name: 'Upload and deploy' }).click();
  await expect(page.getByTestId('deployed')).toContainText(`/${TENANT}/hello/... is live at v2`);
  expect((await invoke(request, `/${TENANT}/hello/`)).text).toBe('Hi, console!\n');

  await page.getByRole('link', { name: 'Deployments' }).click();
  const row = page.locator(`tr[data-route="/${TENANT}/hello/..."]`);
  await expect(row).toContainText('v2');
  await row.getByRole('link', { name: 'History' }).click();
  await expect(page.locator('tr[data-version="2"]')).toContainText('live');
  await expect(page.locator('tr[data-version="1"]')).toContainText('hello');
  await expect(page.locator('tr[data-version="2"]')).toContainText('config_greeting');
  await expect(page.getByText('greeting', { exact: true })).toBeVisible();
  await page.getByRole('button', { name: 'Roll back', exact: true }).click();
  await expect(page.locator('tr[data-version="1"]')).toContainText('live');
  await expect(page.locator('tr[data-version="2"]')).not.toContainText('live');
  expect((await invoke(request, `/${TENANT}/hello/`)).text).toBe('Hello, world!\n');
  await page.screenshot({ path: shots('history'), fullPage: true });
  // And forward again to a chosen version.
  await page.getByRole('button', { name: 'Roll back to v2' }).click();
  await expect(page.locator('tr[data-version="2"]')).toContainText('live');
  expect((await invoke(request, `/${TENANT}/hello/`)).text).toBe('Hi, console!\n');
});

test('canary: the split and what this node sent each side, promoted in one click', async ({ page, request }) => {
  const seen = watchForInjection(page);
  await signIn(page, env.TENANT_KEY);
  const list = await apiCall(request, 'GET', '/api/v1/deployments', env.TENANT_KEY);
  const d = list.body.find((x) => x.route === `/${TENANT}/hello/...`);
  const made = await apiCall(request, 'POST', '/api/v1/deployments', env.TENANT_KEY, {
    route: d.route, component: d.component, config: { greeting: 'Hi', name: 'canary' }, rollout: { percent: 50 },
  });
  expect(made.status).toBe(201);
  const canary = made.body.rollout.version;
  // Half of every hundred requests, evenly: two of these four.
  const answers = [];
  for (let i = 0; i < 4; i++) answers.push((await invoke(request, `/${TENANT}/hello/`)).text);
  expect(answers.filter((a) => a === 'Hi, canary!\n').length).toBe(2);
  await page.goto(`/console#/deployments/${encodeURIComponent(d.id)}`);
  const panel = page.getByTestId('rollout');
  await expect(panel).toContainText(`v${canary} (canary) 50%`);
  await expect(panel).toContainText('2 requests, 0 errors');
  await page.screenshot({ path: shots('canary'), fullPage: true });
  await page.getByRole('button', { name: `Promote v${canary}` }).click();
  await expect(page.locator(`tr[data-version="${canary}"]`)).toContainText('live');
  await expect(page.locator(`tr[data-version="${canary}"]`)).toContainText('canary: promoted');
  await expect(page.getByTestId('rollout')).toHaveCount(0);
  expect((await invoke(request, `/${TENANT}/hello/`)).text).toBe('Hi, canary!\n');
  expect(seen).toEqual([]);
});

test('schedules and queues: a schedule with its next due time, a queue, a message published and consumed', async ({ page }) => {
  const seen = watchForInjection(page);
  await signIn(page, env.TENANT_KEY);
  await page.getByRole('link', { name: 'Schedules & queues' }).click();
  await page.locator('#sch-cron').fill('0 3 * * *');
  await page.locator('#sch-path').fill(`/${TENANT}/hello/nightly`);
  await page.getByRole('button', { name: 'Create schedule' }).click();
  const schedule = page.locator('tr[data-schedule]');
  await expect(schedule).toContainText('0 3 * * *');
  await expect(schedule).toContainText(`POST /${TENANT}/hello/nightly`);
  // Outside the deployment's route: refused in words.
  await page.locator('#sch-path').fill('/elsewhere');
  await page.getByRole('button', { name: 'Create schedule' }).click();
  await expect(page.getByText('outside the deployment')).toBeVisible();

  await page.locator('#q-name').fill('orders');
  await page.locator('#q-path').fill(`/${TENANT}/hello/orders`);
  await page.getByRole('button', { name: 'Create queue' }).click();
  const queue = page.locator('tr[data-queue="orders"]');
  await expect(queue).toContainText(`POST /${TENANT}/hello/orders`);
  await queue.getByRole('button', { name: 'Publish' }).click();
  await page.locator('#q-message').fill('<b>order 1</b>');
  await page.getByRole('button', { name: 'Publish message' }).click();
  await expect(page.getByTestId('published')).toContainText('msg_');
  // hello answers 200: the message is delivered and acknowledged.
  await expect(async () => {
    await page.reload();
    await expect(page.locator('tr[data-queue="orders"] td').nth(2)).toHaveText('0', { timeout: 1000 });
    await expect(page.locator('tr[data-queue="orders"] td').nth(3)).toHaveText('-', { timeout: 1000 });
  }).toPass({ timeout: 30000 });
  await page.screenshot({ path: shots('triggers'), fullPage: true });
  expect(seen).toEqual([]);
});

test('logs: a panicking component\u2019s line arrives live; printed markup stays text; pause and filter', async ({ page, request }) => {
  const injected = watchForInjection(page);
  const deployed = await apiCall(request, 'POST', '/api/v1/components?name=hostile', env.TENANT_KEY, readFileSync(env.HOSTILE_WASM));
  expect(deployed.status).toBeLessThan(300);
  const route = await apiCall(request, 'POST', '/api/v1/deployments', env.TENANT_KEY, { route: `/${TENANT}/hostile/...`, component: deployed.body.digest });
  expect(route.status).toBe(201);
  await signIn(page, env.TENANT_KEY);
  await page.goto('/console#/logs');
  await expect(page.getByText('Live', { exact: true })).toBeVisible();

  expect((await invoke(request, `/${TENANT}/hostile/trap`)).status).toBe(500);
  const trap = page.locator('li[data-outcome="trap"]').first();
  await expect(trap).toBeVisible();
  await expect(trap.locator('pre.stderr')).toContainText('the guest trapped on purpose');

  const markup = '<script>window.__pwned=1</script><img src=x onerror=alert(1)>';
  expect((await invoke(request, `/${TENANT}/hostile/stdout?lines=1&tag=${encodeURIComponent(markup)}`)).status).toBe(200);
  const printed = page.locator('li[data-outcome="ok"]').first();
  await expect(printed.locator('pre').first()).toContainText(`${markup} 0 to stdout`);
  await expect(page.locator('.log-list script, .log-list img')).toHaveCount(0);
  expect(await page.evaluate(() => window.__pwned)).toBeUndefined();
  await page.screenshot({ path: shots('logs'), fullPage: true });

  // Paused: new lines are held, counted, and shown on resume.
  const items = page.locator('.log-list li');
  const shown = await items.count();
  await page.getByRole('button', { name: 'Pause' }).click();
  expect((await invoke(request, `/${TENANT}/hostile/ok`)).status).toBe(200);
  await expect(page.getByText('Paused · 1 new')).toBeVisible();
  await expect(items).toHaveCount(shown);
  await page.getByRole('button', { name: 'Resume' }).click();
  await expect(items).toHaveCount(shown + 1);

  // Filtered to traps: only the trap remains, and new traps arrive.
  await page.locator('#log-outcome').selectOption('trap');
  await expect(items).toHaveCount(1);
  expect((await invoke(request, `/${TENANT}/hostile/trap`)).status).toBe(500);
  await expect(items).toHaveCount(2);
  await expect(page.locator('li[data-outcome="ok"]')).toHaveCount(0);
  expect(injected).toEqual([]);
});

test('names, routes and configuration from tenants are shown as text, never run', async ({ page }) => {
  const injected = watchForInjection(page);
  await signIn(page, env.TENANT_KEY);
  await page.goto('/console#/deploy');
  const name = '<img src=x onerror=alert(1)>';
  // Bytes not uploaded before: the same bytes again keep their first name.
  await page.locator('#file').setInputFiles(env.ECHO_WASM);
  await page.locator('#name').fill(name);
  await page.locator('#route').fill(`/${TENANT}/xss/...`);
  await page.locator('#config').fill('greeting=<script>alert(2)</script>\nnote=<img src=y onerror=alert(3)>');
  await page.getByRole('button', { name: 'Upload and deploy' }).click();
  await expect(page.getByTestId('deployed')).toContainText('is live at v1');
  await page.getByRole('link', { name: 'Deployments' }).click();
  const row = page.locator(`tr[data-route="/${TENANT}/xss/..."]`);
  await expect(row).toContainText(name);
  await row.getByRole('link', { name: 'History' }).click();
  await expect(page.getByText('<script>alert(2)</script>')).toBeVisible();
  await expect(page.getByText(name).first()).toBeVisible();
  await expect(page.locator('main img, main script')).toHaveCount(0);
  expect(injected).toEqual([]);
});

test('keys: create one (shown once, copyable), revoke it, and its session is signed out', async ({ page, browser }) => {
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write']);
  await signIn(page, env.TENANT_KEY);
  await page.goto('/console#/keys');
  await page.getByRole('button', { name: 'Create key' }).click();
  const box = page.getByTestId('new-key');
  await expect(box).toBeVisible();
  const fresh = (await box.locator('code').textContent()).trim();
  expect(fresh).toMatch(/^ww_[0-9A-Za-z]{38}$/);
  await box.getByRole('button', { name: 'Copy' }).click();
  await expect(page.getByText('Key copied')).toBeVisible();
  expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(fresh);
  await page.screenshot({ path: shots('keys'), fullPage: true });

  // A second browser signed in with the new key.
  const other = await browser.newContext();
  const second = await other.newPage();
  await signIn(second, fresh);
  await expect(second.getByTestId('tenant')).toHaveText(TENANT);

  // Revoked from the first, after a confirmation.
  const row = page.locator('tr', { has: page.locator('code', { hasText: fresh.slice(0, 11) }) });
  await row.getByRole('button', { name: 'Revoke' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toContainText('Revoke');
  await dialog.getByRole('button', { name: 'Revoke key' }).click();
  await expect(row).toContainText('revoked');

  // The second is signed out at its next request.
  await second.getByRole('link', { name: 'Usage' }).click();
  await expect(second.getByRole('button', { name: 'Sign in' })).toBeVisible();
  await expect(second.getByText('no longer valid')).toBeVisible();
  expect(await second.evaluate(() => sessionStorage.getItem('wasmwiz.key'))).toBeNull();
  await other.close();
});

test('operators: readiness, tenants with today\u2019s usage, a tier edited, a tenant moved', async ({ page, request }) => {
  await signIn(page, env.ADMIN_KEY);
  await page.getByRole('link', { name: 'Operators' }).click();
  await expect(page.getByTestId('readiness')).toContainText('ready');
  await expect(page.getByTestId('readiness')).toContainText('HTTP 200');
  const acme = page.locator(`tr[data-tenant="${TENANT}"]`);
  await expect(acme).toBeVisible();
  const invocations = Number((await acme.locator('td.num').first().textContent()).replace(/,/g, ''));
  expect(invocations).toBeGreaterThan(0);

  // A tier edited: basic's requests per minute.
  const basic = page.locator('form[data-tier="basic"]');
  await basic.locator('input[data-field="requests_per_minute"]').fill('1234');
  await basic.getByRole('button', { name: 'Save basic' }).click();
  await expect(page.getByText('Tier basic saved')).toBeVisible();
  const tiers = await apiCall(request, 'GET', '/api/v1/tiers', env.ADMIN_KEY);
  const saved = tiers.body.find((t) => t.name === 'basic');
  expect(saved.requests_per_minute).toBe(1234);
  // Every other limit stayed as it was.
  expect(saved.requests_per_day).toBe(10000);

  // A tenant moved to another tier.
  await acme.getByRole('combobox').selectOption('pro');
  await expect(page.getByText(`${TENANT} is now on pro`)).toBeVisible();
  const tenants = await apiCall(request, 'GET', '/api/v1/tenants', env.ADMIN_KEY);
  expect(tenants.body.find((t) => t.name === TENANT).tier).toBe('pro');
  await page.screenshot({ path: shots('admin'), fullPage: true });

  // A tenant's key has no operators' page.
  const tenantPage = await page.context().newPage();
  await signIn(tenantPage, env.TENANT_KEY);
  await expect(tenantPage.getByRole('link', { name: 'Operators' })).toHaveCount(0);
});

test('a narrow window: one column, nothing wider than the screen', async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  await signIn(page, env.TENANT_KEY);
  await expect(page.locator(`tr[data-route="/${TENANT}/hello/..."]`)).toBeVisible();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow).toBeLessThanOrEqual(0);
  await page.screenshot({ path: shots('narrow'), fullPage: true });
});

test('the console cannot be framed by another page', async ({ page }) => {
  const response = await page.goto('/console');
  const headers = response.headers();
  expect(headers['x-frame-options']).toBe('DENY');
  expect(headers['content-security-policy']).toContain("frame-ancestors 'none'");
  // A page that frames it gets Chromium's error page, not the console;
  // beside it, a path without those headers (/health) loads in a frame.
  // The framing page: another origin (localhost, not 127.0.0.1) on this
  // machine, on a path that sets no policy of its own.
  await page.goto(`${env.CONSOLE_BASE.replace('127.0.0.1', 'localhost')}/health`);
  await page.setContent(`<iframe name="health" src="${env.CONSOLE_BASE}/health"></iframe>`
    + `<iframe name="console" src="${env.CONSOLE_BASE}/console"></iframe>`);
  const text = async (name) => {
    const frame = page.frame({ name });
    return frame ? frame.evaluate(() => document.body.innerText).catch(() => '') : '';
  };
  await expect.poll(() => text('health')).toContain('ok');
  await expect.poll(() => page.frame({ name: 'console' })?.url()).toMatch(/^chrome-error:/);
  expect(await text('console')).not.toContain('Sign in');
});

test('a tenant\u2019s page cannot reach the console: no key, no window, no service worker over it', async ({ page, request }) => {
  // The tenant serves an ordinary page and a service worker script whose
  // answer asks for the whole origin (`Service-Worker-Allowed: /`).
  const uploaded = await apiCall(request, 'POST', '/api/v1/components?name=hostile', env.TENANT_KEY, readFileSync(env.HOSTILE_WASM));
  expect(uploaded.status).toBeLessThan(300);
  const route = await apiCall(request, 'POST', '/api/v1/deployments', env.TENANT_KEY, { route: `/${TENANT}/attack/...`, component: uploaded.body.digest });
  expect(route.status).toBe(201);
  const swScript = `/${TENANT}/attack/sw/page?type=text%2Fjavascript&h=Service-Worker-Allowed%3A%2F&body=${encodeURIComponent("self.addEventListener('fetch', () => {});")}`;
  const pageUrl = `${env.SERVING_BASE}/${TENANT}/attack/page?type=text%2Fhtml&body=${encodeURIComponent('<!doctype html><title>tenant page</title><p>hello</p>')}`;

  // Someone signs in to the console in this tab: the key is in the
  // console's session storage.
  await signIn(page, env.ADMIN_KEY);
  // Then opens the tenant's page in the same tab.
  await page.goto(pageUrl);
  expect(new URL(page.url()).origin).not.toBe(new URL(env.CONSOLE_BASE).origin);
  const seen = await page.evaluate(async ({ consoleBase, swScript }) => {
    const out = {};
    // Its storage is not the console's.
    out.storage = Object.keys(sessionStorage).length + Object.keys(localStorage).length;
    // A console window it opens cannot be scripted.
    const w = window.open(`${consoleBase}/console`);
    await new Promise((resolve) => setTimeout(resolve, 500));
    try {
      out.consoleWindow = w && w.document ? w.document.title : 'unreachable';
    } catch (error) {
      out.consoleWindow = `refused: ${error.name}`;
    }
    if (w) w.close();
    // The guest's Service-Worker-Allowed never reaches the browser.
    const script = await fetch(swScript);
    out.allowedHeader = script.headers.get('service-worker-allowed');
    // A worker over the whole origin is refused; one over its own path is
    // fine (and the console is on another origin anyway).
    try {
      await navigator.serviceWorker.register(swScript, { scope: '/' });
      out.rootScope = 'registered';
    } catch (error) {
      out.rootScope = `refused: ${error.name}`;
    }
    try {
      const registration = await navigator.serviceWorker.register(swScript);
      out.ownScope = new URL(registration.scope).pathname;
    } catch (error) {
      out.ownScope = `refused: ${error.name}`;
    }
    return out;
  }, { consoleBase: env.CONSOLE_BASE, swScript });
  expect(seen.storage).toBe(0);
  expect(seen.consoleWindow).not.toContain('WasmWiz');
  expect(seen.consoleWindow === 'unreachable' || seen.consoleWindow.startsWith('refused')).toBe(true);
  expect(seen.allowedHeader).toBeNull();
  expect(seen.rootScope).toMatch(/^refused: SecurityError/);
  expect(seen.ownScope).toBe(`/${TENANT}/attack/sw/`);
  // And /console is never served where tenants' pages are.
  const there = await request.get(`${env.SERVING_BASE}/console`);
  expect(there.status()).toBe(404);
});
