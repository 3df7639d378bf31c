// Resyncs: every job with its progress, records fetched, requests, rates
// and ETA, refreshed live; a failed job can be retried.
import { h, replace, num, when, duration } from './dom.js';
import { get, post, canChange } from './api.js';
import { heading, table, badge, errorBox, loading, toast } from './ui.js';

export async function render(main) {
  const body = h('div', {}, loading());
  main.append(heading('Resyncs'), h('p', {}, 'Re-included customers get their full history fetched again, in batches, within a share of the ERP\'s request budget.'), body);
  let timer = null;
  let stopped = false;
  async function load() {
    if (stopped) return;
    let jobs;
    try {
      jobs = (await get('/resyncs')).jobs;
    } catch (e) {
      replace(body, errorBox(e));
      return;
    }
    jobs.reverse();
    const active = jobs.some((j) => j.state === 'queued' || j.state === 'running');
    if (!body.contains(document.activeElement)) {
      replace(body, table([
        { label: 'Job', cell: (j) => `#${j.id}` },
        { label: 'Connector', cell: (j) => j.connector },
        { label: 'State', cell: (j) => badge(j.state, `state-${j.state}`) },
        {
          label: 'Progress',
          cell: (j) => [h('progress', { max: Math.max(1, j.customers_total), value: j.customers_done, 'aria-label': `Job ${j.id}: ${j.customers_done} of ${j.customers_total} customers` }),
            ` ${num(j.customers_done)} / ${num(j.customers_total)}`],
        },
        { label: 'Records', cell: (j) => num(j.records_fetched), class: 'num' },
        { label: 'Requests', cell: (j) => num(j.requests), class: 'num' },
        { label: 'Rate', cell: (j) => (j.rate.records_per_second != null ? `${j.rate.records_per_second} rec/s, ${j.rate.requests_per_second} req/s` : '—') },
        { label: 'ETA', cell: (j) => (j.eta ? `${duration(j.eta.seconds)} (${when(j.eta.at)})` : j.state === 'done' ? `done ${when(j.finished_at)}` : '—') },
        { label: 'Why', cell: (j) => j.reason },
        {
          label: '',
          cell: (j) => [j.error ? h('p', { class: 'error-text' }, j.error) : null,
            j.state === 'failed' && canChange()
              ? h('button', {
                type: 'button',
                class: 'btn btn-small',
                on: {
                  click: async () => {
                    try {
                      await post(`/resyncs/${j.id}/retry`);
                      toast(`Job ${j.id} queued again.`);
                      load();
                    } catch (e) {
                      toast(e.message, 'error');
                    }
                  },
                },
              }, 'Retry')
              : null],
        },
      ], jobs, { caption: 'Resync jobs, newest first', empty: 'No resync job yet.' }));
    }
    timer = setTimeout(load, active ? 1500 : 10000);
  }
  await load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
