// End-to-end tests of the erpsync web console in headless Chromium.
//
// Run by `cargo test` (tests/it/console_e2e.rs), which starts the daemon on
// the demo connector and passes, in the environment:
//   ERPSYNC_BASE            http://127.0.0.1:PORT
//   ERPSYNC_ADMIN_TOKEN     the admin token
//   ERPSYNC_VIEWER_TOKEN    the viewer token
//   ERPSYNC_HOSTILE         `connector:id` of a customer named <img src=x onerror=alert(1)>
//   ERPSYNC_SCREENSHOTS     folder for the screenshots
//   ERPSYNC_SCENARIOS       `main` (the admin scenarios) or `perf` (page load times)
//   ERPSYNC_CHROMIUM        the browser (default /usr/bin/chromium)
// Prints one line per scenario and `N passed, N failed` at the end; exits
// non-zero when a scenario failed.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BASE = process.env.ERPSYNC_BASE;
const ADMIN = process.env.ERPSYNC_ADMIN_TOKEN;
const VIEWER = process.env.ERPSYNC_VIEWER_TOKEN;
const HOSTILE_REF = process.env.ERPSYNC_HOSTILE || '';
const HOSTILE = '<img src=x onerror=alert(1)>';
const SHOTS = process.env.ERPSYNC_SCREENSHOTS || 'target/e2e-screenshots';
const SCENARIOS = (process.env.ERPSYNC_SCENARIOS || 'main').split(',');
const EXE = process.env.ERPSYNC_CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const WAIT = Number(process.env.ERPSYNC_E2E_WAIT || 60_000);

mkdirSync(SHOTS, { recursive: true });
const profiles = [];

/** A fresh browser with its own new profile. */
async function browser(viewport = { width: 1280, height: 800 }) {
  const dir = mkdtempSync(join(tmpdir(), 'erpsync-e2e-'));
  profiles.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: EXE,
    headless: true,
    args: ARGS,
    viewport,
    acceptDownloads: true,
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.setDefaultTimeout(WAIT);
  page.on('dialog', async (d) => {
    page.alerts = (page.alerts || 0) + 1;
    await d.dismiss();
  });
  page.on('pageerror', (e) => {
    page.errors = [...(page.errors || []), String(e)];
  });
  page.on('console', (m) => {
    if (m.type() === 'error') page.consoleErrors = [...(page.consoleErrors || []), m.text()];
  });
  return { ctx, page };
}

/** The admin API with the bearer token (test set-up and checks only). */
async function api(method, path, body, token = ADMIN) {
  const r = await fetch(BASE + '/api/v1' + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch { /* keep text */ }
  return { status: r.status, data };
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

/** Waits until the page `route` has finished rendering. */
async function ready(page, route) {
  await page.waitForSelector(`main[data-route="${route}"][aria-busy="false"]`);
}

async function go(page, hash, route) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await ready(page, route);
}

async function login(page, token) {
  await page.goto(BASE + '/');
  await page.waitForSelector('input#token');
  await page.fill('input#token', token);
  await page.press('input#token', 'Enter');
  await ready(page, 'overview');
}

/** No horizontal scrolling of the page itself at this width. */
async function fitsWidth(page) {
  const [sw, cw] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  return sw <= cw + 1 ? null : `the page is ${sw}px wide in a ${cw}px viewport`;
}

const results = [];
async function scenario(name, fn) {
  const t = Date.now();
  try {
    await fn();
    results.push([name, true]);
    console.log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

async function customerWithInvoices(state, n) {
  const page = (await api('GET', `/customers?state=${state}&limit=50`)).data.customers;
  const out = [];
  for (const c of page) {
    const d = (await api('GET', `/customers/${encodeURIComponent(c.connector)}/${encodeURIComponent(c.external_id)}`)).data;
    if (d.invoices.length > 0) out.push({ ...c, invoices: d.invoices.length, transactions: d.transactions.length });
    if (out.length === n) break;
  }
  check(out.length === n, `only ${out.length} ${state} customers with invoices on the first page`);
  return out;
}

async function storedCounts(ref) {
  const i = ref.indexOf(':');
  const d = (await api('GET', `/customers/${encodeURIComponent(ref.slice(0, i))}/${encodeURIComponent(ref.slice(i + 1))}`)).data;
  return [d.invoices.length, d.transactions.length];
}

async function main() {
  const { ctx, page } = await browser();
  let picked = [];

  await scenario('log in (a wrong token is refused, the admin token opens the overview)', async () => {
    await page.goto(BASE + '/');
    await page.waitForSelector('input#token');
    await page.fill('input#token', 'not-the-token');
    await page.click('button[type=submit]');
    await page.waitForSelector('.error-slot .error');
    check((await page.textContent('.error-slot .error')).includes('wrong token'), 'no wrong-token message');
    await page.fill('input#token', ADMIN);
    await page.click('button[type=submit]');
    await ready(page, 'overview');
    check((await page.textContent('h1')) === 'Overview', 'no overview heading');
    check(await page.isVisible('text=Last successful sync'), 'no connector card');
    const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
    check(!stored.includes(ADMIN), 'the token is kept in the browser');
    check(!page.url().includes(ADMIN), 'the token is in the URL');
    await shot(page, 'overview-1280');
  });

  await scenario('keyboard: skip link first, visible focus, Enter follows a link, Space ticks a box', async () => {
    await page.goto(BASE + '/#/');
    await page.reload();
    await ready(page, 'overview');
    await page.keyboard.press('Tab');
    const first = await page.evaluate(() => document.activeElement.id);
    check(first === 'skip-link', `first tab stop is ${first}`);
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    check(outline !== 'none', 'focus is not visible on the skip link');
    await page.keyboard.press('Enter');
    check(await page.evaluate(() => document.activeElement.id === 'page-title'), 'the skip link does not move focus to the content');
    // Tab order: brand, then the navigation in reading order.
    await page.focus('a.brand');
    const order = [];
    for (let i = 0; i < 3; i++) {
      await page.keyboard.press('Tab');
      order.push(await page.evaluate(() => document.activeElement.textContent));
    }
    check(order.join('|') === 'Overview|Customers|Excluded', `tab order ${order.join('|')}`);
    const visible = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    check(visible !== 'none', 'focus is not visible on a nav link');
    await page.keyboard.press('Shift+Tab');
    await page.keyboard.press('Enter');
    await ready(page, 'customers');
    check(await page.evaluate(() => document.activeElement.id === 'page-title'), 'focus is not on the new page heading');
    const box = page.locator('tbody input[type=checkbox]').first();
    await box.focus();
    await page.keyboard.press('Space');
    check(await box.isChecked(), 'Space does not tick a checkbox');
    check(await page.isVisible('text=Exclude selected (1)'), 'the action does not follow the selection');
    await page.keyboard.press('Space');
    // A dialog opens with Enter on its button, traps focus, closes with Escape.
    await box.focus();
    await page.keyboard.press('Space');
    await page.focus('button.btn-danger');
    await page.keyboard.press('Enter');
    await page.waitForSelector('dialog[open]');
    check(await page.evaluate(() => document.activeElement.tagName === 'TEXTAREA'), 'focus is not in the dialog');
    await page.keyboard.press('Escape');
    await page.waitForSelector('dialog[open]', { state: 'detached' });
    await shot(page, 'keyboard-focus');
  });

  await scenario('search a customer by name', async () => {
    const target = (await api('GET', '/customers?state=included&limit=5')).data.customers[3];
    await go(page, '#/customers', 'customers');
    await page.fill('input[name=q]', target.name);
    await page.press('input[name=q]', 'Enter');
    await page.waitForFunction((ref) => location.hash.includes('q=') && document.querySelector('main[aria-busy="false"]') && [...document.querySelectorAll('tbody code')].some((c) => c.textContent === ref), target.customer);
    const names = await page.$$eval('tbody a.customer-link', (as) => as.map((a) => a.textContent));
    check(names.includes(target.name), `${target.name} not in ${names}`);
    await shot(page, 'search');
  });

  await scenario('the hostile customer name renders as text', async () => {
    check(HOSTILE_REF, 'no hostile customer was set up');
    await go(page, `#/customers?q=${encodeURIComponent(HOSTILE_REF.split(':')[1])}`, 'customers');
    const cell = page.locator('tbody a.customer-link').first();
    check((await cell.textContent()) === HOSTILE, `the name shows as ${await cell.textContent()}`);
    check((await page.locator('main img').count()) === 0, 'an <img> was created from the name');
    await cell.click();
    await ready(page, 'customers');
    check((await page.textContent('h1')) === HOSTILE, 'the detail heading is not the name as text');
    check((await page.locator('main img').count()) === 0, 'an <img> on the detail page');
    await go(page, `#/customers?q=${encodeURIComponent('<img')}`, 'customers');
    check(!page.alerts, 'a script from the name ran');
    await shot(page, 'hostile-name');
  });

  await scenario('bulk-exclude 3 customers and see their invoices gone', async () => {
    picked = await customerWithInvoices('included', 3);
    await go(page, '#/customers?state=included', 'customers');
    for (const c of picked) {
      await page.check(`input[aria-label="Select ${c.name} (${c.customer})"]`);
    }
    await page.click('text=Exclude selected (3)…');
    await page.waitForSelector('dialog[open]');
    await page.fill('dialog textarea[name=reason]', 'e2e: in liquidation');
    await page.click('dialog button[type=submit]');
    await page.waitForSelector('dialog[open]', { state: 'detached' });
    await page.waitForSelector('.toast >> text=Excluded 3 customer(s)');
    for (const c of picked) {
      await go(page, `#/customer/${encodeURIComponent(c.connector)}/${encodeURIComponent(c.external_id)}`, 'customers');
      const counts = await page.textContent('[data-testid=record-counts]');
      check(counts === '0 invoices and 0 transactions stored.', `${c.customer}: ${counts}`);
      check(await page.isVisible('.badge-excluded'), 'not shown as excluded');
      const [i, t] = await storedCounts(c.customer);
      check(i === 0 && t === 0, `${c.customer} still has ${i} invoices and ${t} transactions`);
    }
    await shot(page, 'excluded-customer-detail');
  });

  await scenario('export the excluded CSV and check its rows', async () => {
    await go(page, '#/excluded?source=manual', 'excluded');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('text=Export CSV')]);
    const text = readFileSync(await download.path(), 'utf8');
    const lines = text.trim().split('\n');
    check(lines[0] === 'connector,external_id,name,email,source,reason,excluded_at,excluded_by', `header ${lines[0]}`);
    for (const c of picked) {
      const row = lines.find((l) => l.startsWith(`${c.connector},${c.external_id},`));
      check(row, `${c.customer} is not in the CSV`);
      check(row.includes(',manual,manual: e2e: in liquidation,'), `row ${row}`);
      check(row.endsWith(',web:admin'), `row ${row}`);
    }
    check(lines.length === 1 + picked.length, `${lines.length - 1} rows for ${picked.length} manual exclusions`);
    await shot(page, 'excluded-page');
  });

  await scenario('re-include them, watch the resync finish and the invoices come back', async () => {
    await go(page, '#/excluded?source=manual', 'excluded');
    for (const c of picked) await page.check(`input[aria-label="Select ${c.name} (${c.customer})"]`);
    await page.click('text=Re-include selected (3)…');
    await page.waitForSelector('dialog[open] [data-testid=reinclude-estimate]');
    const estimate = await page.textContent('[data-testid=reinclude-estimate]');
    check(/^Re-includes 3 customer\(s\) and resyncs their full history: roughly [\d,]+ records in about \d+ requests/.test(estimate), `estimate: ${estimate}`);
    await shot(page, 'reinclude-confirmation');
    await page.click('dialog button[type=submit]');
    await page.waitForSelector('.job-watch [data-job]');
    await shot(page, 'resync-running');
    await page.waitForSelector('.job-watch [data-job][data-state="done"]', { timeout: 120_000 });
    await shot(page, 'resync-done');
    for (const c of picked) {
      const [i, t] = await storedCounts(c.customer);
      check(i === c.invoices && t === c.transactions, `${c.customer}: ${i}/${t} records back, ${c.invoices}/${c.transactions} before`);
      await go(page, `#/customer/${encodeURIComponent(c.connector)}/${encodeURIComponent(c.external_id)}`, 'customers');
      const counts = await page.textContent('[data-testid=record-counts]');
      check(counts.startsWith(`${c.invoices} invoices`), `${c.customer}: ${counts}`);
    }
    await go(page, '#/resyncs', 'resyncs');
    check(await page.isVisible('.badge-state-done'), 'the resync page shows no finished job');
  });

  await scenario('preview a draft rule', async () => {
    const draft = [{ id: 'e2e-draft', description: 'Names with Group', when: { field: 'name', op: 'contains', value: 'group' } }];
    const expected = (await api('POST', '/rules/preview', { rules: draft })).data;
    await go(page, '#/rules', 'rules');
    await page.fill('textarea#draft', JSON.stringify(draft));
    await page.click('text=Preview impact');
    await page.waitForSelector('[data-testid=preview-message]');
    const msg = await page.textContent('[data-testid=preview-message]');
    check(msg.startsWith(`The draft ${expected.message}`), `preview says ${msg}, API ${expected.message}`);
    const after = (await api('GET', '/rules')).data;
    check(!after.rules.some((r) => r.id === 'e2e-draft'), 'the preview applied the draft');
    await page.fill('textarea#draft', '[{"id": ');
    await page.click('text=Preview impact');
    await page.waitForSelector('.preview-result .error');
    check((await page.textContent('.preview-result .error')).includes('not valid JSON'), 'no JSON error');
    await page.fill('textarea#draft', JSON.stringify(draft));
    await page.click('text=Preview impact');
    await page.waitForSelector('[data-testid=preview-message]');
    await shot(page, 'rules-preview');
  });

  await scenario('STOP a customer and see its (x) with reason stopped in the reminder list', async () => {
    const list = (await api('GET', '/reminders/candidates?limit=100')).data.candidates;
    const target = list.find((c) => c.selected);
    check(target, 'no selected candidate on the first page');
    const i = target.customer.indexOf(':');
    await go(page, `#/customer/${encodeURIComponent(target.customer.slice(0, i))}/${encodeURIComponent(target.customer.slice(i + 1))}`, 'customers');
    await page.click('text=STOP reminders…');
    await page.waitForSelector('dialog[open]');
    const until = new Date(Date.now() + 7 * 86400e3).toISOString().slice(0, 10);
    await page.fill('dialog textarea[name=reason]', 'e2e: payment plan agreed');
    await page.fill('dialog input[name=until]', until);
    await page.fill('dialog textarea[name=note]', 'three instalments');
    await page.click('dialog button[type=submit]');
    await page.waitForSelector('.stop-flag');
    check((await page.textContent('.stop-flag')).includes(`until ${until}`), 'the STOP does not show its end date');
    await go(page, '#/reminders', 'reminders');
    const row = page.locator('tbody tr', { has: page.locator(`a[href$="${encodeURIComponent(target.customer.slice(i + 1))}"]`) });
    check((await row.count()) === 1, 'the stopped customer is not in the list');
    check((await row.locator('.check-off').textContent()) === '(x)', 'no (x) marker');
    check((await row.locator('[data-reason]').allTextContents()).includes('stopped'), 'reason is not stopped');
    await page.waitForSelector('[data-testid=selected-due]');
    await shot(page, 'reminders-stopped');
  });

  await scenario('Sync now answers with the result or the API\'s error', async () => {
    await go(page, '#/', 'overview');
    await page.click('text=Sync now');
    await page.waitForFunction(() => {
      const t = document.querySelector('.sync-result');
      return t && t.textContent && t.textContent !== 'Asking for a sync…';
    });
    const said = await page.textContent('.sync-result');
    console.log(`     Sync now said: ${said}`);
    check(said.length > 0, 'nothing shown');
  });

  await scenario('usable at 1280x800 and at 390 px wide', async () => {
    for (const [w, hgt] of [[1280, 800], [390, 844]]) {
      await page.setViewportSize({ width: w, height: hgt });
      for (const [hash, route, name] of [['#/', 'overview', 'overview'], ['#/customers', 'customers', 'customers'], ['#/excluded', 'excluded', 'excluded'], ['#/rules', 'rules', 'rules'], ['#/resyncs', 'resyncs', 'resyncs'], ['#/reminders', 'reminders', 'reminders']]) {
        await go(page, hash, route);
        const wide = await fitsWidth(page);
        check(!wide, `${name} at ${w}px: ${wide}`);
        if (w === 390) await shot(page, `${name}-390`);
      }
    }
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await scenario('log out ends the session', async () => {
    await go(page, '#/', 'overview');
    await page.click('text=Log out');
    await page.waitForSelector('input#token');
    const st = await page.evaluate(async () => (await fetch('/api/v1/status')).status);
    check(st === 401, `after logout the API answered ${st}`);
  });

  check(!page.errors, `script errors: ${page.errors}`);
  await ctx.close();

  const viewer = await browser();
  await scenario('a viewer sees everything and can change nothing', async () => {
    const p = viewer.page;
    await login(p, VIEWER);
    check((await p.textContent('.who .badge')).includes('read-only'), 'no read-only badge');
    check((await p.locator('button:has-text("Sync now")').count()) === 0, 'Sync now shown to a viewer');
    await go(p, '#/customers', 'customers');
    check((await p.locator('tbody input[type=checkbox]').count()) === 0, 'selection boxes shown to a viewer');
    check((await p.locator('main button:has-text("Exclude")').count()) === 0, 'an Exclude button shown to a viewer');
    const c = (await api('GET', '/customers?state=included&limit=1')).data.customers[0];
    await go(p, `#/customer/${encodeURIComponent(c.connector)}/${encodeURIComponent(c.external_id)}`, 'customers');
    check((await p.locator('main button').count()) === 0, 'action buttons on a customer for a viewer');
    await go(p, '#/excluded', 'excluded');
    check((await p.locator('main button:has-text("Re-include")').count()) === 0, 'Re-include shown to a viewer');
    await go(p, '#/rules', 'rules');
    check((await p.locator('main button:has-text("Reload")').count()) === 0, 'Reload shown to a viewer');
    // Going around the page: the API itself refuses.
    const answer = await p.evaluate(async (ref) => {
      const s = await (await fetch('/api/v1/session')).json();
      const r = await fetch('/api/v1/exclusions', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token }, body: JSON.stringify({ customers: [ref], reason: 'viewer tries' }) });
      return [r.status, (await r.json()).error];
    }, c.customer);
    check(answer[0] === 403 && answer[1].startsWith('the viewer role is read-only'), `the API answered ${answer}`);
    const d = (await api('GET', `/customers/${encodeURIComponent(c.connector)}/${encodeURIComponent(c.external_id)}`)).data;
    check(!d.excluded, 'the viewer excluded a customer');
    await shot(p, 'viewer');
  });
  await viewer.ctx.close();
}

/** Page load times: a full load of each page until it has rendered its
 * data, and an in-app navigation to it. Printed, not asserted. */
async function perf() {
  const { ctx, page } = await browser();
  await login(page, ADMIN);
  const some = (await api('GET', '/customers?limit=1&after=demo:C10000')).data.customers[0];
  const pages = [
    ['overview', '#/', 'overview'],
    ['customers', '#/customers', 'customers'],
    ['customers, search by name', `#/customers?q=${encodeURIComponent(some.name)}`, 'customers'],
    ['customers, excluded only', '#/customers?state=excluded', 'customers'],
    ['customer detail', `#/customer/${encodeURIComponent(some.connector)}/${encodeURIComponent(some.external_id)}`, 'customers'],
    ['excluded', '#/excluded', 'excluded'],
    ['rules', '#/rules', 'rules'],
    ['resyncs', '#/resyncs', 'resyncs'],
    ['reminders', '#/reminders', 'reminders'],
  ];
  const total = (await api('GET', '/status')).data.customers.total;
  console.log(`page load times with ${total} customers (median of 3; full load = navigation start to data rendered; in-app = hash change to data rendered)`);
  console.log('page | full load ms | in-app ms');
  for (const [name, hash, route] of pages) {
    const full = [];
    const inApp = [];
    for (let i = 0; i < 3; i++) {
      // A new document each time: performance.now() counts from its navigation start.
      await page.goto('about:blank');
      await page.goto(BASE + '/' + hash, { waitUntil: 'commit' });
      await ready(page, route);
      full.push(await page.evaluate(() => Math.round(performance.now())));
      await go(page, '#/resyncs', 'resyncs');
      const t0 = Date.now();
      await go(page, hash, route);
      inApp.push(Date.now() - t0);
    }
    const med = (a) => a.sort((x, y) => x - y)[1];
    console.log(`${name} | ${med(full)} | ${med(inApp)}`);
  }
  await shot(page, 'perf-customers');
  check(!page.errors, `script errors: ${page.errors}`);
  await ctx.close();
}

try {
  if (SCENARIOS.includes('main')) await main();
  if (SCENARIOS.includes('perf')) await scenario('page load times', perf);
} finally {
  for (const d of profiles) rmSync(d, { recursive: true, force: true });
}
const failed = results.filter(([, ok]) => !ok).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
