// One customer: why it is (not) excluded, its open invoices and
// transactions, its reminder standing, and the actions on it: exclude,
// re-include, clear the manual decision, STOP (with an end date and a
// note), and invoice holds.
import { h, replace, num, when } from './dom.js';
import { get, post, del, qs, canChange, customerPath } from './api.js';
import { heading, table, badge, errorBox, loading, dialog, toast, reload } from './ui.js';
import { reincludeFlow } from './excluded.js';

function section(title, ...content) {
  const id = 'sec-' + title.toLowerCase().replace(/[^a-z]+/g, '-');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), ...content);
}

function decisionText(d) {
  return `${d.action === 'exclude' ? 'Excluded' : 'Re-included'} by hand by ${d.actor} on ${when(d.at)}: ${d.reason}`;
}

export async function render(main, params) {
  const ref = `${params.connector}:${params.id}`;
  const path = customerPath(ref);
  const body = h('div', { class: 'detail' }, loading());
  main.append(heading(ref), body);
  let ex;
  let detail = null;
  try {
    ex = await get(path + '/explain');
    if (ex.synced) detail = await get(path);
  } catch (e) {
    replace(body, errorBox(e));
    return;
  }
  const title = main.querySelector('#page-title');
  replace(title, ex.name || ref);

  const actions = h('div', { class: 'actions' });
  if (canChange()) {
    if (ex.synced && !ex.excluded) {
      actions.append(h('button', {
        type: 'button',
        class: 'btn btn-danger',
        on: {
          click: async () => {
            const out = await dialog({
              title: `Exclude ${ex.name || ref}`,
              body: h('p', {}, 'Its invoices and transactions are deleted from erpsync now and not synced again until it is re-included.'),
              fields: [{ name: 'reason', label: 'Reason', type: 'textarea', required: true, hint: 'Kept in the audit trail.' }],
              confirm: 'Exclude',
              danger: true,
              onConfirm: (v) => post('/exclusions', { customers: [ref], reason: v.reason }),
            });
            if (out) {
              toast(`Excluded: ${out.purged_invoices} invoices and ${out.purged_transactions} transactions deleted.`);
              reload();
            }
          },
        },
      }, 'Exclude…'));
    }
    if (ex.synced && ex.excluded) {
      actions.append(h('button', {
        type: 'button',
        class: 'btn btn-primary',
        on: { click: async () => { if (await reincludeFlow([ref])) reload(); } },
      }, 'Re-include…'));
    }
    if (ex.manual) {
      actions.append(h('button', {
        type: 'button',
        class: 'btn',
        on: {
          click: async () => {
            const out = await dialog({
              title: 'Clear the manual decision',
              body: h('p', {}, 'The customer goes back to the rules and native exclusions: ',
                ex.automatic ? `it would be ${ex.automatic.excluded ? 'excluded' : 'included'} (${ex.automatic.reason}).` : 'it has not been synced yet.'),
              fields: [{ name: 'reason', label: 'Reason', type: 'textarea' }],
              confirm: 'Clear the decision',
              onConfirm: (v) => del(path + '/decision' + qs({ reason: v.reason })),
            });
            if (out) {
              toast('Manual decision cleared.');
              reload();
            }
          },
        },
      }, 'Clear manual decision…'));
    }
  }

  const rem = ex.reminder;
  const stop = rem && rem.stop;
  const stopActions = h('div', { class: 'actions' });
  if (canChange() && ex.synced && !ex.excluded) {
    if (stop) {
      stopActions.append(h('button', {
        type: 'button',
        class: 'btn',
        on: {
          click: async () => {
            const out = await dialog({
              title: 'Clear the STOP',
              fields: [{ name: 'reason', label: 'Reason', type: 'textarea', required: true }],
              confirm: 'Clear the STOP',
              onConfirm: (v) => post('/reminders/unstop', { customer: ref, reason: v.reason }),
            });
            if (out) {
              toast(out.message);
              reload();
            }
          },
        },
      }, 'Clear STOP…'));
    } else {
      stopActions.append(h('button', {
        type: 'button',
        class: 'btn btn-danger',
        on: {
          click: async () => {
            const today = new Date().toISOString().slice(0, 10);
            const out = await dialog({
              title: `STOP reminders to ${ex.name || ref}`,
              body: h('p', {}, 'The customer stays synced but is not selected for reminders. With an end date it becomes selectable again by itself the day after.'),
              fields: [
                { name: 'reason', label: 'Reason', type: 'textarea', required: true, hint: 'Kept in the audit trail.' },
                { name: 'until', label: 'Last day of the STOP (optional)', type: 'date', min: today },
                { name: 'note', label: 'Note (optional)', type: 'textarea' },
              ],
              confirm: 'STOP',
              danger: true,
              onConfirm: (v) => post('/reminders/stop', { customer: ref, reason: v.reason, until: v.until || undefined, note: v.note || undefined }),
            });
            if (out) {
              toast(out.message);
              reload();
            }
          },
        },
      }, 'STOP reminders…'));
    }
  }

  const cl = ex.classification;
  const invoices = detail ? detail.invoices : [];
  const open = invoices.filter((i) => i.status === 'open');
  const held = new Set(((rem && rem.held_invoices) || []).filter((x) => x.hold).map((x) => x.invoice));
  const holdButton = (inv) => {
    if (!canChange() || inv.status !== 'open') return null;
    const invRef = `${params.connector}:${inv.external_id}`;
    const isHeld = held.has(invRef);
    return h('button', {
      type: 'button',
      class: 'btn btn-small',
      on: {
        click: async () => {
          const out = await dialog({
            title: `${isHeld ? 'Release' : 'Hold'} invoice ${inv.number}`,
            fields: [{ name: 'reason', label: 'Reason', type: 'textarea', required: true }],
            confirm: isHeld ? 'Release' : 'Hold',
            onConfirm: (v) => post(isHeld ? '/reminders/release' : '/reminders/hold', { invoice: invRef, reason: v.reason }),
          });
          if (out) {
            toast(out.message);
            reload();
          }
        },
      },
    }, isHeld ? 'Release…' : 'Hold…');
  };

  replace(body,
    section('Classification',
      h('p', { class: 'summary-line' }, cl ? (cl.excluded ? badge('excluded') : badge('included')) : badge('not synced', 'pending'), ' ', ex.summary),
      detail ? h('dl', { class: 'facts' },
        h('dt', {}, 'Customer'), h('dd', {}, h('code', {}, ref)),
        h('dt', {}, 'Email'), h('dd', {}, detail.email || '—'),
        h('dt', {}, 'Reason'), h('dd', {}, cl ? cl.reason : '—'),
        h('dt', {}, 'Since'), h('dd', {}, when(ex.classified_at)),
        h('dt', {}, 'First seen'), h('dd', {}, when(detail.first_seen))) : null,
      h('h3', {}, 'Native flags'),
      ex.native.length
        ? h('ul', {}, ex.native.map((n) => h('li', {}, `${n.name}: ${n.description} — `, n.applies ? 'applies' : 'does not apply', n.enabled ? '' : ' (switched off in the configuration)')))
        : h('p', {}, 'This connector has no native exclusions.'),
      h('h3', {}, 'Matching rules'),
      ex.rules.length
        ? h('ul', {}, ex.rules.map((r) => h('li', {}, h('code', {}, r.id), ` ${r.description}`, r.decisive ? ' — decides' : '', r.overridden ? ' — overridden by the manual decision' : '')))
        : h('p', {}, 'No rule in force matches.'),
      h('h3', {}, 'Manual decision'),
      h('p', {}, ex.manual ? decisionText(ex.manual) : 'None: the rules and native exclusions decide.'),
      actions),
    section('Reminders',
      h('p', {}, rem ? rem.summary : 'Not a reminder candidate (not synced).'),
      stop ? h('p', { class: 'stop-flag' }, h('strong', {}, 'STOP'), ` by ${stop.actor} on ${when(stop.at)}: ${stop.reason}`,
        stop.until ? `; until ${stop.until}` : '; no end date', stop.note ? h('span', { class: 'note' }, ` — note: ${stop.note}`) : null) : null,
      stopActions),
    section(`Open invoices (${open.length} of ${invoices.length})`,
      table([
        { label: 'Invoice', cell: (i) => i.number },
        { label: 'Due', cell: (i) => i.due_date },
        { label: 'Amount due', cell: (i) => `${i.currency} ${i.amount_due}`, class: 'num' },
        { label: 'Total', cell: (i) => `${i.currency} ${i.total}`, class: 'num' },
        { label: 'Hold', cell: (i) => [i.on_hold ? 'in the ERP ' : '', held.has(`${params.connector}:${i.external_id}`) ? 'by an admin ' : '', holdButton(i)] },
      ], open, { empty: ex.excluded ? 'None stored: the data of an excluded customer is not kept.' : 'No open invoice.' }),
      h('p', { class: 'muted', 'data-testid': 'record-counts' }, `${num(invoices.length)} invoices and ${num(detail ? detail.transactions.length : 0)} transactions stored.`)),
    section(`Transactions (${detail ? detail.transactions.length : 0})`,
      table([
        { label: 'Id', cell: (t) => t.external_id },
        { label: 'Kind', cell: (t) => t.kind.replace('_', ' ') },
        { label: 'Date', cell: (t) => t.date },
        { label: 'Amount', cell: (t) => `${t.currency} ${t.amount}`, class: 'num' },
      ], detail ? detail.transactions.slice(0, 200) : [], { empty: ex.excluded ? 'None stored: the data of an excluded customer is not kept.' : 'No transaction.' })),
    section('History',
      table([
        { label: 'When', cell: (e) => when(e.at) },
        { label: 'What', cell: (e) => e.action.replace('_', ' ') },
        { label: 'Who', cell: (e) => e.actor },
        { label: 'Why', cell: (e) => [e.reason, e.to ? ` → ${e.to.reason}` : ''] },
      ], ex.history, { empty: 'No recorded change.' })));
}
