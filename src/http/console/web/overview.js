// Overview: per connector its state, last successful sync and its age,
// last error in plain words, records synced and dropped, the request
// budget; customers by classification; resync jobs. "Sync now" asks the
// daemon for a poll pass at once.
import { h, replace, num, when, age } from './dom.js';
import { get, request, canChange } from './api.js';
import { heading, badge, errorBox, toast } from './ui.js';

const REFRESH_MS = 10000;

/** What to do about an error, when its words say the ERP refused the
 * credentials. */
function credentialHint(message) {
  if (/\b(401|403)\b|unauthori[sz]ed|forbidden|expired|revoked|invalid[_ ](token|signature|credential|client|grant)|authenticat/i.test(message)) {
    return 'The ERP refused erpsync\'s credentials. Renew or re-issue them in the ERP, put the new values in the credential files named in the configuration, and restart erpsync.';
  }
  if (/\b429\b|rate limit|too many requests/i.test(message)) {
    return 'The ERP is rate-limiting erpsync. It backs off and retries by itself; lower requests_per_second if this persists.';
  }
  if (/timed? ?out|connect|dns|resolve|unreachable/i.test(message)) {
    return 'The ERP could not be reached. Check the network and the ERP\'s status; erpsync retries by itself.';
  }
  return null;
}

function connectorCard(c) {
  const lastSuccess = c.last_success;
  const ageS = lastSuccess ? (Date.now() - new Date(lastSuccess).getTime()) / 1000 : null;
  const stale = ageS == null || ageS > Math.max(3 * c.poll_interval_seconds, 300);
  const counters = c.counters || {};
  const result = h('div', { class: 'sync-result', role: 'status' });
  const syncBtn = canChange()
    ? h('button', {
      type: 'button',
      class: 'btn btn-primary',
      on: {
        click: async () => {
          syncBtn.disabled = true;
          replace(result, 'Asking for a sync…');
          try {
            const r = await request('POST', `/connectors/${encodeURIComponent(c.id)}/sync`, {});
            replace(result, r.status === 202 ? 'A sync pass started.' : 'Sync requested.');
            toast(`${c.id}: sync started`);
          } catch (e) {
            replace(result, h('span', { class: 'error-text' }, e.message));
          } finally {
            syncBtn.disabled = false;
          }
        },
      },
    }, 'Sync now')
    : null;
  const err = c.last_error;
  const hint = err ? credentialHint(err.message) : null;
  const r = c.requests || {};
  return h('section', { class: 'card connector', 'aria-labelledby': `conn-${c.id}` },
    h('div', { class: 'card-head' },
      h('h2', { id: `conn-${c.id}` }, c.id, ' ', h('span', { class: 'muted' }, `(${c.kind})`)),
      badge(c.state, `state-${c.state}`)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Last successful sync'),
      h('dd', { class: stale ? 'stale' : '' },
        lastSuccess ? `${when(lastSuccess)} (${age(lastSuccess)})` : 'never',
        stale ? h('strong', { class: 'stale-flag' }, ' — stale') : null),
      h('dt', {}, 'Polls every'), h('dd', {}, `${c.poll_interval_seconds} s`),
      h('dt', {}, 'Passes since start'), h('dd', {}, num(c.passes)),
      h('dt', {}, 'Synced'), h('dd', {}, `${num(counters.synced_customers || 0)} customers, ${num(counters.synced_invoices || 0)} invoices, ${num(counters.synced_transactions || 0)} transactions`),
      h('dt', {}, 'Dropped (excluded customers)'), h('dd', {}, `${num(counters.dropped_invoices || 0)} invoices, ${num(counters.dropped_transactions || 0)} transactions`),
      h('dt', {}, 'Quarantined records'), h('dd', {}, num(counters.quarantined || 0)),
      h('dt', {}, 'Requests'), h('dd', {}, `${num(r.poll_requests)} polling, ${num(r.resync_requests)} resync, ${num(r.in_flight)} in flight, ${num(r.retries)} retries, ${num(r.rate_limited)} rate-limited`),
      h('dt', {}, 'Customers'), h('dd', {}, `${num(c.customers.included)} included, ${num(c.customers.excluded)} excluded`)),
    err
      ? h('div', { class: 'last-error', role: 'note' },
        h('p', {}, h('strong', {}, `Last error (${when(err.at)}${c.consecutive_errors ? `, ${c.consecutive_errors} in a row` : ''}): `), err.message),
        hint ? h('p', { class: 'hint' }, hint) : null)
      : null,
    h('div', { class: 'card-actions' }, syncBtn, result));
}

function byLine(obj) {
  const e = Object.entries(obj || {});
  return e.length ? e.map(([k, v]) => `${k}: ${num(v)}`).join(', ') : 'none';
}

export async function render(main) {
  const body = h('div', { class: 'overview' });
  main.append(heading('Overview'), body);
  async function load(refresh) {
    // A refresh never pulls the page from under a keyboard user.
    if (refresh && body.contains(document.activeElement)) return;
    let s;
    try {
      s = await get('/status');
    } catch (e) {
      replace(body, errorBox(e));
      return;
    }
    const rs = s.resync;
    replace(body,
      h('section', { class: 'card summary', 'aria-labelledby': 'sum-title' },
        h('h2', { id: 'sum-title' }, 'Customers'),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Total'), h('dd', {}, num(s.customers.total)),
          h('dt', {}, 'Included'), h('dd', {}, num(s.customers.included)),
          h('dt', {}, 'Excluded'), h('dd', {}, h('a', { href: '#/excluded' }, num(s.customers.excluded))),
          h('dt', {}, 'By source'), h('dd', {}, byLine(s.customers.excluded_by_source)),
          h('dt', {}, 'Manual re-includes over a rule'), h('dd', {}, num(s.customers.manual_overrides)),
          h('dt', {}, 'Resync jobs'), h('dd', {}, h('a', { href: '#/resyncs' }, `${rs.jobs_running} running, ${rs.jobs_queued} queued, ${rs.jobs_failed} failed`), `; ${num(rs.customers_pending)} customers waiting`),
          h('dt', {}, 'Rules in force'), h('dd', {}, h('a', { href: '#/rules' }, num(s.rules))),
          h('dt', {}, 'Last reload'), h('dd', {}, s.last_reload ? `${when(s.last_reload.at)}: ${s.last_reload.message}` : 'none since start'),
          h('dt', {}, 'Daemon'), h('dd', {}, `erpsync ${s.version}, up since ${when(s.started_at)}`))),
      s.connectors.map(connectorCard));
  }
  await load();
  const timer = setInterval(() => load(true), REFRESH_MS);
  return () => clearInterval(timer);
}
