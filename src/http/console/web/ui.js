// Shared pieces of the pages: headings, messages, dialogs, tables, pagers.
import { h, append, clear, customerHref } from './dom.js';

/** The page heading; focused after navigation so screen readers and
 * keyboard users start at the top of the new page. */
export function heading(text, ...extra) {
  return h('div', { class: 'page-head' }, h('h1', { tabindex: '-1', id: 'page-title' }, text), ...extra);
}

/** A short-lived message in the polite live region. */
export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  const t = h('div', { class: `toast toast-${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 12000 : 6000);
}

/** An error shown in the page (role=alert: read out at once). */
export function errorBox(err) {
  const msg = err && err.message ? err.message : String(err);
  return h('div', { class: 'error', role: 'alert' }, msg);
}

/** A state badge: `excluded`, `included`, `running`... */
export function badge(text, kind) {
  return h('span', { class: `badge badge-${kind || text}` }, text);
}

/** A link to a customer's page showing its name (text, never markup). */
export function customerLink(ref, name) {
  return h('a', { href: customerHref(ref), class: 'customer-link' }, name == null || name === '' ? ref : name);
}

/**
 * A modal dialog (native <dialog>: focus stays inside, Escape closes).
 * `fields`: [{name, label, type, required, value, min, hint}]; resolves to
 * the field values on confirm, or null when cancelled. `onConfirm(values)`
 * may throw to keep the dialog open and show the error.
 */
export function dialog({ title, body, fields = [], confirm = 'Confirm', danger = false, onConfirm }) {
  return new Promise((resolve) => {
    const inputs = {};
    const err = h('div', { class: 'dialog-error', role: 'alert' });
    const form = h('form', { method: 'dialog', class: 'dialog-form' });
    const ok = h('button', { type: 'submit', class: danger ? 'btn btn-danger' : 'btn btn-primary' }, confirm);
    const cancel = h('button', { type: 'button', class: 'btn', on: { click: () => dlg.close('cancel') } }, 'Cancel');
    const titleId = 'dlg-title-' + Math.random().toString(36).slice(2);
    append(form, h('h2', { id: titleId }, title), h('div', { class: 'dialog-body' }, body || []));
    for (const f of fields) {
      const id = 'f-' + f.name + '-' + Math.random().toString(36).slice(2);
      const input = f.type === 'textarea'
        ? h('textarea', { id, name: f.name, rows: 3, required: !!f.required, value: f.value || '' })
        : h('input', { id, name: f.name, type: f.type || 'text', required: !!f.required, value: f.value || '', min: f.min || false, autocomplete: 'off' });
      inputs[f.name] = input;
      append(form, h('div', { class: 'field' },
        h('label', { for: id }, f.label, f.required ? h('span', { class: 'req', 'aria-hidden': 'true' }, ' *') : null),
        input,
        f.hint ? h('p', { class: 'hint' }, f.hint) : null));
    }
    append(form, err, h('div', { class: 'dialog-actions' }, cancel, ok));
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': titleId }, form);
    let done = false;
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const values = {};
      for (const [k, el] of Object.entries(inputs)) values[k] = el.value.trim();
      for (const f of fields) {
        if (f.required && !values[f.name]) {
          clear(err).append(`${f.label} is required.`);
          inputs[f.name].focus();
          return;
        }
      }
      ok.disabled = true;
      clear(err);
      try {
        const out = onConfirm ? await onConfirm(values) : values;
        done = true;
        dlg.close('ok');
        resolve(out === undefined ? values : out);
      } catch (e) {
        err.append(e.message || String(e));
        ok.disabled = false;
      }
    });
    dlg.addEventListener('close', () => {
      dlg.remove();
      if (!done) resolve(null);
    });
    document.body.append(dlg);
    dlg.showModal();
    const first = fields.length ? inputs[fields[0].name] : ok;
    first.focus();
  });
}

/**
 * A table. `columns`: [{label, cell(row) → node|string, class}];
 * `select`: {key(row), selected: Set, onChange(), label(row)} adds a
 * checkbox column with a select-page box in the header.
 */
export function table(columns, rows, { select, caption, empty = 'Nothing to show.' } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  const headRow = h('tr');
  let pageBox = null;
  const boxes = [];
  if (select) {
    pageBox = h('input', {
      type: 'checkbox',
      'aria-label': 'Select every row on this page',
      on: {
        change: () => {
          for (const [row, box] of boxes) {
            box.checked = pageBox.checked;
            if (pageBox.checked) select.selected.add(select.key(row));
            else select.selected.delete(select.key(row));
          }
          select.onChange();
        },
      },
    });
    headRow.append(h('th', { class: 'col-select', scope: 'col' }, pageBox));
  }
  for (const c of columns) headRow.append(h('th', { scope: 'col', class: c.class || false }, c.label));
  const body = h('tbody');
  for (const row of rows) {
    const tr = h('tr');
    if (select) {
      const key = select.key(row);
      const box = h('input', {
        type: 'checkbox',
        checked: select.selected.has(key),
        'aria-label': 'Select ' + select.label(row),
        on: {
          change: () => {
            if (box.checked) select.selected.add(key);
            else select.selected.delete(key);
            syncPageBox();
            select.onChange();
          },
        },
      });
      boxes.push([row, box]);
      tr.append(h('td', { class: 'col-select' }, box));
    }
    for (const c of columns) tr.append(h('td', { class: c.class || false, 'data-label': c.label }, c.cell(row)));
    body.append(tr);
  }
  function syncPageBox() {
    if (pageBox) pageBox.checked = boxes.every(([, b]) => b.checked);
  }
  syncPageBox();
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data' }, caption ? h('caption', {}, caption) : null, h('thead', {}, headRow), body));
}

/** Previous / next buttons for cursor paging. */
export function pager({ hasPrev, hasNext, onPrev, onNext, label }) {
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', class: 'btn', disabled: !hasPrev, on: { click: onPrev } }, '← Previous'),
    h('span', { class: 'pager-label' }, label || ''),
    h('button', { type: 'button', class: 'btn', disabled: !hasNext, on: { click: onNext } }, 'Next →'));
}

/** A labelled form control in a filter bar. */
export function labelled(label, control) {
  const id = control.id || 'c-' + Math.random().toString(36).slice(2);
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control);
}

/** A <select> from [value, label] pairs. */
export function select(name, options, value) {
  return h('select', { name }, options.map(([v, l]) => h('option', { value: v, selected: v === (value || '') }, l)));
}

/** A loading line, replaced when the data arrives. */
export function loading(what = 'Loading…') {
  return h('p', { class: 'loading', 'aria-live': 'polite' }, what);
}

/** Renders the current page again (after a change). */
export function reload() {
  window.dispatchEvent(new HashChangeEvent('hashchange'));
}
