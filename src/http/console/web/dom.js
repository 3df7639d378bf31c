// Building the page: DOM calls and text nodes only. Nothing here (or in
// any module of the console) turns a string into markup, so data from the
// ERP or the API is always shown as text.

/** Creates an element. `attrs`: attributes (true = present, false/null =
 * absent), `class`, and `on: {event: handler}`; children: nodes, strings
 * (as text), arrays, or null/false (skipped). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'on') {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k.startsWith('on')) {
      throw new Error('event handlers go in `on`, never in attributes');
    } else if (k === 'class') {
      if (v) el.className = v;
    } else if (k === 'value' && (tag === 'input' || tag === 'textarea' || tag === 'select')) {
      el.value = v == null ? '' : String(v);
    } else if (k === 'checked' || k === 'disabled' || k === 'selected') {
      el[k] = !!v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else if (v !== false && v != null) {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

/** Appends children (see `h`). */
export function append(el, ...children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Removes every child. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

const nf = new Intl.NumberFormat('en-US');

/** 12,345 */
export function num(n) {
  return n == null ? '—' : nf.format(n);
}

/** An instant as `2026-03-01 14:05 UTC` (times are UTC everywhere). */
export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

/** `3 min ago`, `2 h ago`, `4 days ago`. */
export function age(iso, now = Date.now()) {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  return duration(s) + ' ago';
}

/** `45 s`, `3 min`, `2 h 5 min`, `4 days`. */
export function duration(s) {
  if (s == null) return '—';
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} days`;
}

/** Money by currency (`{"USD": "12.50"}`) as `USD 12.50 · EUR 3.00`. The
 * amounts are decimal strings from the API, shown as they are. */
export function money(byCurrency) {
  const parts = Object.entries(byCurrency || {}).map(([c, a]) => `${c} ${a}`);
  return parts.length ? parts.join(' · ') : '—';
}

/** A customer reference `connector:id` split at the first colon. */
export function splitRef(ref) {
  const i = ref.indexOf(':');
  return [ref.slice(0, i), ref.slice(i + 1)];
}

/** The console URL of a customer's detail page. */
export function customerHref(ref) {
  const [c, id] = splitRef(ref);
  return `#/customer/${encodeURIComponent(c)}/${encodeURIComponent(id)}`;
}
