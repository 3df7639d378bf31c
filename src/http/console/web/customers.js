// Customers: search by name, email or ERP id (excluded ones too), filter by
// state and source, page through tens of thousands with a cursor, select
// rows or everything matching, and exclude them with a reason.
import { h, replace, num } from './dom.js';
import { get, post, qs, canChange } from './api.js';
import { heading, table, pager, labelled, select, errorBox, loading, dialog, toast, badge, customerLink, reload } from './ui.js';

const PAGE = 50;
/** Cursors of the pages before the current one, per search. */
const history = { key: null, stack: [] };

export function stateBadge(c) {
  return c.excluded ? badge('excluded') : badge('included');
}

export async function render(main, params) {
  const q = params.q || '';
  const state = params.state || '';
  const source = params.source || '';
  const after = params.after || '';
  const searchKey = JSON.stringify([q, state, source]);
  if (history.key !== searchKey) {
    history.key = searchKey;
    history.stack = [];
  }
  const go = (p) => {
    location.hash = '#/customers' + qs(p);
  };

  const qInput = h('input', { type: 'search', name: 'q', value: q, placeholder: 'name, email or ERP id' });
  const stateSel = select('state', [['', 'any'], ['included', 'included'], ['excluded', 'excluded']], state);
  const sourceSel = select('source', [['', 'any'], ['native', 'native'], ['rule', 'rule'], ['manual', 'manual']], source);
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Search customers' },
    labelled('Search', qInput), labelled('State', stateSel), labelled('Source', sourceSel),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Search'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go({ q: qInput.value.trim(), state: stateSel.value, source: sourceSel.value });
  });

  const results = h('div', { class: 'results' }, loading());
  const actions = h('div', { class: 'bulk', 'aria-live': 'polite' });
  main.append(heading('Customers'), form, actions, results);

  let page;
  try {
    page = await get('/customers' + qs({ q, state, source, after, limit: PAGE }));
  } catch (e) {
    replace(results, errorBox(e));
    return;
  }
  const selected = new Set();
  let allMatching = false;
  const rows = page.customers;

  function renderActions() {
    if (!canChange()) {
      replace(actions);
      return;
    }
    const n = selected.size;
    const pageAll = rows.length > 0 && rows.every((r) => selected.has(r.customer));
    const more = page.next || after;
    replace(actions,
      allMatching
        ? h('p', { class: 'select-note' }, 'Every customer matching this search is selected. ',
          h('button', { type: 'button', class: 'btn-link', on: { click: () => { allMatching = false; selected.clear(); rerender(); } } }, 'Clear the selection'))
        : pageAll && more
          ? h('p', { class: 'select-note' }, `All ${rows.length} customers on this page are selected. `,
            h('button', { type: 'button', class: 'btn-link', on: { click: () => { allMatching = true; renderActions(); } } }, 'Select every customer matching this search'))
          : null,
      h('button', {
        type: 'button',
        class: 'btn btn-danger',
        disabled: !allMatching && n === 0,
        on: { click: () => (allMatching ? excludeMatching() : excludeSelected()) },
      }, allMatching ? 'Exclude all matching…' : `Exclude selected (${n})…`));
  }

  async function excludeSelected() {
    const list = [...selected];
    const out = await dialog({
      title: `Exclude ${list.length} customer(s)`,
      body: [h('p', {}, 'Their invoices and transactions are deleted from erpsync now, and not synced again until they are re-included.'),
        h('ul', { class: 'short-list' }, list.slice(0, 10).map((r) => h('li', {}, r)), list.length > 10 ? h('li', {}, `and ${list.length - 10} more`) : null)],
      fields: [{ name: 'reason', label: 'Reason', type: 'textarea', required: true, hint: 'Kept in the audit trail.' }],
      confirm: 'Exclude',
      danger: true,
      onConfirm: (v) => post('/exclusions', { customers: list, reason: v.reason }),
    });
    if (out) {
      toast(`Excluded ${out.changed} customer(s): ${out.purged_invoices} invoices and ${out.purged_transactions} transactions deleted.`);
      rerender(true);
    }
  }

  async function excludeMatching() {
    const sel = { q: q || undefined, state: state || undefined, source: source || undefined };
    // Everything must be asked for explicitly: no text means "every customer".
    if (!q) sel.condition = { all: [] };
    let impact;
    try {
      impact = await post('/exclusions/mass', { ...sel, reason: 'impact preview' });
    } catch (e) {
      toast(e.message, 'error');
      return;
    }
    const n = impact.confirm_with;
    const out = await dialog({
      title: `Exclude ${num(n)} customers`,
      body: [h('p', {}, impact.message.replace(/; send again.*$/, '.')),
        n === 0 ? h('p', {}, 'Nothing to do: they are all excluded by hand already.') : null],
      fields: n ? [{ name: 'reason', label: 'Reason', type: 'textarea', required: true, hint: 'Kept in the audit trail.' }] : [],
      confirm: n ? `Exclude ${num(n)} customers` : 'Close',
      danger: n > 0,
      onConfirm: (v) => (n ? post('/exclusions/mass', { ...sel, reason: v.reason, confirm: n }) : null),
    });
    if (out && out.applied) {
      toast(`Excluded ${num(out.outcome.changed)} customers: ${num(out.outcome.purged_invoices)} invoices and ${num(out.outcome.purged_transactions)} transactions deleted.`);
      allMatching = false;
      selected.clear();
      rerender(true);
    }
  }

  function rerender(again) {
    if (again) {
      reload();
      return;
    }
    renderResults();
    renderActions();
  }

  function selectionChanged() {
    if (!rows.every((r) => selected.has(r.customer))) allMatching = false;
    renderActions();
  }

  function renderResults() {
    const cols = [
      { label: 'Name', cell: (c) => customerLink(c.customer, c.name) },
      { label: 'Customer', cell: (c) => h('code', {}, c.customer) },
      { label: 'Email', cell: (c) => c.email || '—' },
      { label: 'State', cell: stateBadge },
      { label: 'Reason', cell: (c) => c.reason },
    ];
    const first = history.stack.length === 0 && !after;
    replace(results,
      table(cols, rows, {
        caption: `Customers ${first ? 'from the first' : 'on this'} page${q ? ` matching “${q}”` : ''}`,
        empty: 'No customer matches.',
        select: canChange() ? { key: (c) => c.customer, selected, onChange: selectionChanged, label: (c) => `${c.name} (${c.customer})` } : null,
      }),
      pager({
        hasPrev: !!after,
        hasNext: !!page.next,
        label: `${rows.length} shown`,
        onPrev: () => {
          const prev = history.stack.pop();
          go({ q, state, source, after: prev || undefined });
        },
        onNext: () => {
          history.stack.push(after);
          go({ q, state, source, after: page.next });
        },
      }));
  }
  renderResults();
  renderActions();
}
