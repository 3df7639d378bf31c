// Reminders: the task list as the collections team sees it. Every
// candidate, checked or not; an unchecked row carries an (x) and its
// reasons. Totals per currency over the whole list; CSV export.
import { h, replace, num, money } from './dom.js';
import { get, qs } from './api.js';
import { heading, table, labelled, select, errorBox, loading, customerLink } from './ui.js';

const PAGE = 100;
const history = { key: null, stack: [] };
const REASONS = {
  stopped: 'stopped',
  no_scenario: 'no scenario',
  below_minimum: 'below minimum',
  above_maximum: 'above maximum',
  creditor: 'creditor',
};

export async function render(main, params) {
  const selected = params.selected || '';
  const asOf = params.as_of || '';
  const cursor = params.cursor || '';
  const key = JSON.stringify([selected, asOf]);
  if (history.key !== key) {
    history.key = key;
    history.stack = [];
  }
  const go = (p) => { location.hash = '#/reminders' + qs(p); };
  const selSel = select('selected', [['', 'all'], ['true', 'selected'], ['false', 'unchecked']], selected);
  const dateIn = h('input', { type: 'date', name: 'as_of', value: asOf });
  const form = h('form', { class: 'filters', 'aria-label': 'Filter the list' },
    labelled('Rows', selSel), labelled('As of (UTC)', dateIn),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Show'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go({ selected: selSel.value, as_of: dateIn.value });
  });
  const csv = h('a', { class: 'btn', href: '/api/v1/reminders/candidates.csv' + qs({ selected, as_of: asOf }), download: 'reminder-candidates.csv' }, 'Export CSV');
  const summary = h('div', { class: 'card summary' }, loading('Adding up the list…'));
  const list = h('div', { class: 'results' }, loading());
  main.append(heading('Reminders', csv), form, summary, list);

  const filter = { selected, as_of: asOf };
  // The summary scans every customer: it arrives after the first page.
  get('/reminders/summary' + qs(filter)).then((s) => {
    replace(summary,
      h('h2', {}, `Task list as of ${s.as_of}`),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Listed'), h('dd', {}, `${num(s.listed)} customers: ${num(s.selected)} selected, ${num(s.unchecked)} unchecked`),
        h('dt', {}, 'Unchecked because'), h('dd', {}, Object.entries(s.unchecked_by_reason).map(([r, n]) => `${REASONS[r] || r}: ${num(n)}`).join(', ') || '—'),
        h('dt', {}, 'Due, selected'), h('dd', { 'data-testid': 'selected-due' }, money(s.selected_due)),
        h('dt', {}, 'Due, all listed'), h('dd', {}, money(s.total_due))));
  }).catch((e) => replace(summary, errorBox(e)));

  let page;
  try {
    page = await get('/reminders/candidates' + qs({ ...filter, cursor, limit: PAGE }));
  } catch (e) {
    replace(list, errorBox(e));
    return;
  }
  const rows = page.candidates;
  replace(list,
    table([
      {
        label: 'Selected',
        cell: (c) => (c.selected
          ? h('span', { class: 'check check-on', role: 'img', 'aria-label': 'selected' }, '☑')
          : h('span', { class: 'check check-off', role: 'img', 'aria-label': 'not selected' }, '(x)')),
      },
      { label: 'Customer', cell: (c) => customerLink(c.customer, c.name) },
      { label: 'Scenario', cell: (c) => c.scenario || '—' },
      { label: 'Due', cell: (c) => money(c.total_due), class: 'num' },
      { label: 'Overdue invoices', cell: (c) => num(c.overdue_invoices), class: 'num' },
      { label: 'Oldest due', cell: (c) => c.oldest_due_date || '—' },
      { label: 'Why not', cell: (c) => c.reasons.map((r) => h('span', { class: `reason reason-${r}`, 'data-reason': r }, REASONS[r] || r)) },
    ], rows, { caption: `Candidates as of ${page.as_of}`, empty: 'No candidate on this page.' }),
    h('nav', { class: 'pager', 'aria-label': 'Pages' },
      h('button', { type: 'button', class: 'btn', disabled: !cursor, on: { click: () => go({ ...filter, cursor: history.stack.pop() || undefined }) } }, '← Previous'),
      h('span', { class: 'pager-label' }, `${rows.length} shown (${num(page.scanned)} customers looked at)`),
      h('button', { type: 'button', class: 'btn', disabled: !page.next_cursor, on: { click: () => { history.stack.push(cursor); go({ ...filter, cursor: page.next_cursor }); } } }, 'Next →')));
}
