// Rules: the rules in force and what each matches now; a draft rule set
// previewed without applying it; the reload that applies the file on disk,
// with the ratio guard's refusal shown as it is.
import { h, replace, num } from './dom.js';
import { get, post, canChange } from './api.js';
import { heading, table, errorBox, loading, dialog, toast, customerLink, reload } from './ui.js';

function changes(title, list) {
  return h('div', {},
    h('h3', {}, `${title} (${num(list.length)}${list.length >= 1000 ? '+' : ''})`),
    table([
      { label: 'Customer', cell: (c) => customerLink(c.customer, c.name) },
      { label: 'Now', cell: (c) => c.from },
      { label: 'With the draft', cell: (c) => c.to },
      { label: 'Records to delete', cell: (c) => `${num(c.invoices)} invoices, ${num(c.transactions)} transactions` },
    ], list.slice(0, 200), { empty: 'None.' }),
    list.length > 200 ? h('p', { class: 'muted' }, `and ${num(list.length - 200)} more`) : null);
}

export async function render(main) {
  const inForce = h('div', {}, loading());
  const draft = h('textarea', { id: 'draft', name: 'draft', rows: 14, spellcheck: 'false', class: 'code' });
  const result = h('div', { class: 'preview-result', 'aria-live': 'polite' });
  const previewForm = h('form', { class: 'card', 'aria-labelledby': 'draft-title' },
    h('h2', { id: 'draft-title' }, 'Preview a draft'),
    h('p', {}, 'A JSON list of rules ({"id", "description", "when"}, the same condition language as the configuration). Nothing is applied: the preview says what would change.'),
    h('div', { class: 'field' }, h('label', { for: 'draft' }, 'Draft rule set'), draft),
    h('button', { type: 'submit', class: 'btn btn-primary' }, 'Preview impact'),
    result);
  previewForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let rules;
    try {
      rules = JSON.parse(draft.value);
    } catch (e) {
      replace(result, errorBox(`The draft is not valid JSON: ${e.message}`));
      return;
    }
    if (!Array.isArray(rules)) rules = [rules];
    replace(result, loading('Classifying every customer with the draft…'));
    try {
      const p = await post('/rules/preview', { rules });
      const i = p.impact;
      replace(result,
        h('p', { class: p.would_be_refused ? 'error' : 'ok', 'data-testid': 'preview-message', role: p.would_be_refused ? 'alert' : false },
          `The draft ${p.message}.`,
          p.would_be_refused ? ` A reload with it would be refused: more than ${(p.max_new_exclusion_ratio * 100).toFixed(1)}% of all customers would be newly excluded.` : ''),
        table([
          { label: 'Rule', cell: (r) => h('code', {}, r.id) },
          { label: 'Description', cell: (r) => r.description },
          { label: 'Matches', cell: (r) => num(r.matching), class: 'num' },
          { label: 'Would exclude', cell: (r) => num(r.excluding), class: 'num' },
        ], i.rules, { caption: 'Per rule', empty: 'The draft has no rules.' }),
        changes('Would be excluded', i.newly_excluded),
        changes('Would be re-included', i.newly_included));
    } catch (e) {
      replace(result, errorBox(e));
    }
  });

  const reloadResult = h('div', { 'aria-live': 'polite' });
  const reloadCard = canChange()
    ? h('section', { class: 'card', 'aria-labelledby': 'reload-title' },
      h('h2', { id: 'reload-title' }, 'Apply the configuration file'),
      h('p', {}, 'Reads the rules from the configuration file on disk and puts them in force, re-classifying every customer. Refused when it would newly exclude too many customers.'),
      h('button', {
        type: 'button',
        class: 'btn btn-danger',
        on: {
          click: async () => {
            const ok = await dialog({ title: 'Reload the configuration?', body: h('p', {}, 'Every stored customer is re-classified with the rules in the file on disk.'), confirm: 'Reload' });
            if (!ok) return;
            replace(reloadResult, loading('Reloading…'));
            try {
              const r = await post('/reload');
              replace(reloadResult, h('p', { class: 'ok' }, r.message), r.restart_needed.length ? h('p', {}, `Needs a restart to take effect: ${r.restart_needed.join(', ')}.`) : null);
              toast('Reload applied.');
              setTimeout(reload, 1500);
            } catch (e) {
              replace(reloadResult, errorBox(e));
            }
          },
        },
      }, 'Reload…'),
      reloadResult)
    : null;

  main.append(heading('Rules'), inForce, previewForm, reloadCard);
  let r;
  try {
    r = await get('/rules');
  } catch (e) {
    replace(inForce, errorBox(e));
    return;
  }
  draft.value = JSON.stringify(r.rules.map((x) => ({ id: x.id, description: x.description, when: x.when })), null, 2);
  replace(inForce, h('section', { class: 'card', 'aria-labelledby': 'force-title' },
    h('h2', { id: 'force-title' }, 'In force'),
    h('p', {}, `${num(r.rules.length)} rule(s) from ${r.config_file}, over ${num(r.total_customers)} customers. A reload is refused above ${(r.max_new_exclusion_ratio * 100).toFixed(1)}% new exclusions.`),
    table([
      { label: 'Rule', cell: (x) => h('code', {}, x.id) },
      { label: 'Description', cell: (x) => x.description },
      { label: 'Condition', cell: (x) => h('pre', { class: 'code' }, JSON.stringify(x.when)) },
      { label: 'Matches now', cell: (x) => num(x.matching), class: 'num' },
      { label: 'Excludes', cell: (x) => num(x.excluding), class: 'num' },
    ], r.rules, { empty: 'No rules are configured.' })));
}
