// The console's entry point: the session, the page shell and the router.
// Pages are modules with `render(main, params)`; they return an optional
// cleanup function (to stop polling) called when the page is left.
import { h, replace } from './dom.js';
import { session, request, whenLoggedOut, ApiError } from './api.js';
import { toast, errorBox } from './ui.js';
import * as login from './login.js';
import * as overview from './overview.js';
import * as customers from './customers.js';
import * as customer from './customer.js';
import * as excluded from './excluded.js';
import * as rules from './rules.js';
import * as resyncs from './resyncs.js';
import * as reminders from './reminders.js';

const NAV = [
  ['overview', 'Overview', '#/'],
  ['customers', 'Customers', '#/customers'],
  ['excluded', 'Excluded', '#/excluded'],
  ['rules', 'Rules', '#/rules'],
  ['resyncs', 'Resyncs', '#/resyncs'],
  ['reminders', 'Reminders', '#/reminders'],
];

/** Route name → page module and the parameters of the hash. */
function route() {
  const hash = location.hash.startsWith('#/') ? location.hash.slice(2) : '';
  const [path, query] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const params = Object.fromEntries(new URLSearchParams(query || ''));
  switch (parts[0] || '') {
    case '': return ['overview', overview, params];
    case 'customers': return ['customers', customers, params];
    case 'customer': return ['customers', customer, { ...params, connector: parts[1], id: parts.slice(2).join('/') }];
    case 'excluded': return ['excluded', excluded, params];
    case 'rules': return ['rules', rules, params];
    case 'resyncs': return ['resyncs', resyncs, params];
    case 'reminders': return ['reminders', reminders, params];
    default: return [null, null, params];
  }
}

const app = document.getElementById('app');
let cleanup = null;
let main = null;
let navLinks = {};

function shell() {
  navLinks = {};
  const nav = h('nav', { class: 'nav', 'aria-label': 'Pages' },
    h('ul', {}, NAV.map(([name, label, href]) => {
      const a = h('a', { href }, label);
      navLinks[name] = a;
      return h('li', {}, a);
    })));
  const role = session.current.role;
  const who = h('div', { class: 'who' },
    h('span', { class: `badge badge-role-${role}`, title: `Changes are recorded as ${session.current.actor}` },
      role === 'admin' ? 'admin' : 'viewer · read-only'),
    h('button', { type: 'button', class: 'btn btn-small', on: { click: logout } }, 'Log out'));
  main = h('main', { id: 'main', tabindex: '-1', 'aria-busy': 'true' });
  replace(app,
    h('header', { class: 'top' }, h('a', { class: 'brand', href: '#/' }, 'erpsync'), nav, who),
    main);
}

async function show() {
  if (cleanup) {
    try { cleanup(); } catch { /* the old page is gone anyway */ }
    cleanup = null;
  }
  if (!session.current) return;
  // A dialog belongs to the page it was opened on.
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  if (!main) shell();
  const [name, page, params] = route();
  for (const [n, a] of Object.entries(navLinks)) {
    if (n === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  main.setAttribute('aria-busy', 'true');
  main.dataset.route = name || 'unknown';
  replace(main);
  if (!page) {
    replace(main, h('h1', { tabindex: '-1', id: 'page-title' }, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.')));
    main.setAttribute('aria-busy', 'false');
    return;
  }
  const started = performance.now();
  try {
    cleanup = (await page.render(main, params)) || null;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) main.append(errorBox(e));
  }
  main.dataset.renderMs = String(Math.round(performance.now() - started));
  main.setAttribute('aria-busy', 'false');
  const title = document.getElementById('page-title');
  document.title = (title ? title.textContent + ' · ' : '') + 'erpsync console';
  if (moveFocus && title) title.focus();
  moveFocus = true;
}

let moveFocus = false;

async function logout() {
  try {
    await request('DELETE', '/session');
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) {
      toast(e.message, 'error');
      return;
    }
  }
  loggedOut('You are logged out.');
}

function loggedOut(message) {
  session.current = null;
  main = null;
  if (cleanup) {
    try { cleanup(); } catch { /* ignore */ }
    cleanup = null;
  }
  login.render(app, message, () => {
    moveFocus = false;
    show();
  });
}

whenLoggedOut((msg) => loggedOut(msg));
window.addEventListener('hashchange', () => show());
document.getElementById('skip-link').addEventListener('click', (ev) => {
  ev.preventDefault();
  const target = document.getElementById('page-title') || document.getElementById('main');
  if (target) target.focus();
});

async function start() {
  try {
    const r = await request('GET', '/session', undefined, { login: true });
    session.current = r.data;
    show();
  } catch (e) {
    loggedOut(e instanceof ApiError && e.status === 401 ? null : e.message);
  }
}

start();
