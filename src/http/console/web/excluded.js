// Excluded customers (the settings page): source and reason, search and
// filter, CSV export, multi-select and re-include behind a confirmation
// that says what the resync will fetch; then the resync job, live.
import { h, replace, num, when, duration } from './dom.js';
import { get, post, del, qs, canChange, customerPath } from './api.js';
import { heading, table, pager, labelled, select, errorBox, loading, dialog, toast, badge, customerLink, reload } from './ui.js';

const PAGE = 50;
const history = { key: null, stack: [] };

/**
 * Re-includes `refs` after a confirmation with the estimate; shows the
 * resync job(s) it queued. Resolves to the API's outcome, or null.
 */
export async function reincludeFlow(refs, jobSlot) {
  let est;
  try {
    est = await post('/reinclusions/estimate', { customers: refs });
  } catch (e) {
    toast(e.message, 'error');
    return null;
  }
  const per = est.connectors.map((c) => h('li', {},
    `${c.connector}: ${num(c.customers)} customers × about ${c.records_per_customer} records (from ${c.basis}) ≈ ${num(c.records)} records, ${num(c.requests)} requests${c.seconds != null ? `, about ${duration(c.seconds)}` : ''}`));
  const out = await dialog({
    title: `Re-include ${num(est.customers)} customer(s)`,
    body: [
      h('p', { class: 'estimate', 'data-testid': 'reinclude-estimate' }, est.message.charAt(0).toUpperCase() + est.message.slice(1) + '.'),
      per.length ? h('ul', {}, per) : null,
      h('p', {}, 'The decision sticks: the rules and native exclusions will not exclude them again until the decision is cleared.'),
    ],
    fields: [{ name: 'reason', label: 'Reason (optional)', type: 'textarea' }],
    confirm: 'Re-include',
    onConfirm: (v) => post('/reinclusions', { customers: refs, reason: v.reason || undefined }),
  });
  if (!out) return null;
  toast(`Re-included ${num(out.newly_included)} customer(s); ${num(out.queued_for_resync)} queued for resync.`);
  if (jobSlot && out.resync_jobs.length) watchJobs(jobSlot, out.resync_jobs);
  return out;
}

/** Shows resync jobs with their progress until they finish. */
export function watchJobs(slot, ids) {
  let stopped = false;
  async function tick() {
    if (stopped || !slot.isConnected) return;
    let jobs;
    try {
      jobs = await Promise.all(ids.map((id) => get(`/resyncs/${id}`)));
    } catch (e) {
      replace(slot, errorBox(e));
      return;
    }
    replace(slot, h('section', { class: 'card job-watch', 'aria-labelledby': 'job-watch-title' },
      h('h2', { id: 'job-watch-title' }, 'Resync'),
      jobs.map((j) => h('div', { class: 'job', 'data-job': j.id, 'data-state': j.state },
        h('p', {}, h('a', { href: '#/resyncs' }, `Job ${j.id}`), ' ', badge(j.state, `state-${j.state}`),
          ` ${num(j.customers_done)} of ${num(j.customers_total)} customers, ${num(j.records_fetched)} records fetched`,
          j.eta ? `, about ${duration(j.eta.seconds)} left` : ''),
        h('progress', { max: Math.max(1, j.customers_total), value: j.customers_done, 'aria-label': `Job ${j.id} progress` }),
        j.error ? h('p', { class: 'error-text' }, j.error) : null))));
    if (jobs.some((j) => j.state === 'queued' || j.state === 'running')) setTimeout(tick, 1000);
  }
  tick();
  return () => { stopped = true; };
}

export async function render(main, params) {
  const q = params.q || '';
  const source = params.source || '';
  const after = params.after || '';
  const key = JSON.stringify([q, source]);
  if (history.key !== key) {
    history.key = key;
    history.stack = [];
  }
  const go = (p) => { location.hash = '#/excluded' + qs(p); };
  const qInput = h('input', { type: 'search', name: 'q', value: q, placeholder: 'name, email or ERP id' });
  const sourceSel = select('source', [['', 'any'], ['native', 'native'], ['rule', 'rule'], ['manual', 'manual']], source);
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Search excluded customers' },
    labelled('Search', qInput), labelled('Source', sourceSel),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Search'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go({ q: qInput.value.trim(), source: sourceSel.value });
  });
  const csv = h('a', { class: 'btn', href: '/api/v1/excluded.csv' + qs({ q, source }), download: 'excluded.csv' }, 'Export CSV');
  const actions = h('div', { class: 'bulk' });
  const jobSlot = h('div', { class: 'job-slot', 'aria-live': 'polite' });
  const results = h('div', { class: 'results' }, loading());
  main.append(heading('Excluded customers', csv), form, actions, jobSlot, results);

  let page;
  try {
    page = await get('/excluded' + qs({ q, source, after, limit: PAGE }));
  } catch (e) {
    replace(results, errorBox(e));
    return;
  }
  const selected = new Set();
  const renderActions = () => {
    if (!canChange()) return;
    replace(actions, h('button', {
      type: 'button',
      class: 'btn btn-primary',
      disabled: selected.size === 0,
      on: {
        click: async () => {
          const out = await reincludeFlow([...selected], jobSlot);
          if (out) {
            selected.clear();
            await refreshList();
          }
        },
      },
    }, `Re-include selected (${selected.size})…`));
  };
  const cols = [
    { label: 'Name', cell: (e) => customerLink(e.customer, e.name) },
    { label: 'Customer', cell: (e) => h('code', {}, e.customer) },
    { label: 'Source', cell: (e) => badge(e.source, `source-${e.source}`) },
    { label: 'Reason', cell: (e) => [h('code', {}, e.reason), e.detail ? ` ${e.detail}` : ''] },
    { label: 'Excluded', cell: (e) => when(e.excluded_at) },
    { label: 'By', cell: (e) => e.excluded_by },
  ];
  function renderList() {
    const parts = [
      table(cols, page.excluded, {
        caption: 'Excluded customers',
        empty: q || source ? 'No excluded customer matches.' : 'No customer is excluded.',
        select: canChange() ? { key: (e) => e.customer, selected, onChange: renderActions, label: (e) => `${e.name || e.customer} (${e.customer})` } : null,
      }),
      pager({
        hasPrev: !!after,
        hasNext: !!page.next,
        label: `${page.excluded.length} shown`,
        onPrev: () => go({ q, source, after: history.stack.pop() || undefined }),
        onNext: () => { history.stack.push(after); go({ q, source, after: page.next }); },
      }),
    ];
    if (page.pending && page.pending.length) {
      parts.push(h('section', { class: 'card', 'aria-labelledby': 'pending-title' },
        h('h2', { id: 'pending-title' }, 'Waiting for their first sync'),
        h('p', {}, 'Excluded by id before erpsync ever saw them: their data will never be imported.'),
        table([
          { label: 'Customer', cell: (e) => h('code', {}, e.customer) },
          { label: 'Reason', cell: (e) => e.detail },
          { label: 'By', cell: (e) => `${e.excluded_by}, ${when(e.excluded_at)}` },
          {
            label: '',
            cell: (e) => (canChange()
              ? h('button', {
                type: 'button',
                class: 'btn btn-small',
                on: {
                  click: async () => {
                    try {
                      await del(customerPath(e.customer) + '/decision' + qs({ reason: 'withdrawn in the console' }));
                      toast(`Withdrawn: ${e.customer}`);
                      reload();
                    } catch (err) {
                      toast(err.message, 'error');
                    }
                  },
                },
              }, 'Withdraw')
              : ''),
          },
        ], page.pending)));
    }
    replace(results, parts);
  }
  async function refreshList() {
    try {
      page = await get('/excluded' + qs({ q, source, after, limit: PAGE }));
    } catch (e) {
      replace(results, errorBox(e));
      return;
    }
    renderList();
    renderActions();
  }
  renderList();
  renderActions();
}
