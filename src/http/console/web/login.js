// The login form: a token (admin or viewer) exchanged for a session cookie.
// The token goes to the API once, in a POST body; it is never kept.
import { h, replace } from './dom.js';
import { session, request } from './api.js';

export function render(root, message, onDone) {
  const token = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const err = h('div', { class: 'error-slot', role: 'alert' }, message ? h('p', { class: 'notice' }, message) : null);
  const button = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Log in');
  const form = h('form', { class: 'login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'erpsync console'),
    h('p', {}, 'Log in with the admin token, or with the viewer token for read-only access.'),
    h('div', { class: 'field' }, h('label', { for: 'token' }, 'Token'), token),
    err,
    button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    replace(err);
    try {
      const r = await request('POST', '/session', { token: token.value.trim() }, { login: true });
      token.value = '';
      session.current = r.data;
      onDone();
    } catch (e) {
      replace(err, h('p', { class: 'error' }, e.message));
      button.disabled = false;
      token.focus();
    }
  });
  replace(root, h('main', { id: 'main', class: 'login-page', 'data-route': 'login', 'aria-busy': 'false' }, form));
  token.focus();
}
