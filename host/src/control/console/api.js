// api.js — the admin API client of the runnel console: api() adds the bearer
// token and the headers a change needs, turns {"error": ...} answers into
// thrown errors, and on a 401 asks for the token with #token-form (one
// question shared by every waiting call) and retries. The token lives in
// sessionStorage under runnel.token, never in a URL.

const KEY = 'runnel.token';
export const REFUSED = 'That token was refused by this node (HTTP 401). Check --token / RUNNEL_TOKEN.';

export class ApiError extends Error {
  constructor(status, message, network = false) {
    super(message);
    this.status = status;
    this.network = network;
  }
}

function getToken() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}
function setToken(token) {
  try {
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
  } catch {
    /* storage disabled: the token lasts until the form is shown again */
  }
}

/**
 * Calls the API. opts: method, json (a body sent as JSON) or body (a Blob or
 * File sent as application/octet-stream). Resolves to the parsed JSON answer
 * (null for an empty one); rejects with an ApiError carrying the API's sentence.
 */
export async function api(path, { method = 'GET', json, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['x-runnel-request'] = '1';
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (body !== undefined) headers['Content-Type'] = 'application/octet-stream';
  for (;;) {
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    else delete headers.Authorization;
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'same-origin' });
    } catch (e) {
      throw new ApiError(0, `This node (${location.host}) does not answer: ${e.message}.`, true);
    }
    if (res.status === 401) {
      // Another call may have brought a new token meanwhile: retry with it first.
      if (getToken() === token) await askToken(token ? REFUSED : '');
      continue;
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (res.ok && token && waiting) tokenWorks(); // a token set meanwhile works: stop asking
    if (!res.ok) {
      const sentence = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status} ${res.statusText}`.trim();
      throw new ApiError(res.status, sentence);
    }
    return data;
  }
}

// --- the token form -------------------------------------------------------

const $ = (id) => document.getElementById(id);
let waiting = null; // { promise, resolve } while calls wait for a token

function showForm(message, needed) {
  const form = $('token-form');
  $('token-error').textContent = message;
  $('token-cancel').hidden = needed;
  $('token-forget').hidden = !getToken();
  $('token-button').setAttribute('aria-expanded', 'true');
  const wasHidden = form.hidden;
  form.hidden = false;
  if (wasHidden) {
    $('token').value = '';
    $('token').focus();
  }
}

function hideForm() {
  $('token-form').hidden = true;
  $('token-button').setAttribute('aria-expanded', 'false');
}

/** Shows the token form and resolves once a token is submitted. */
function askToken(message) {
  if (!waiting) {
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    waiting = { promise, resolve };
    showForm(message, true);
  } else if (message) $('token-error').textContent = message;
  return waiting.promise;
}

function tokenWorks() {
  hideForm();
  $('token-error').textContent = '';
  waiting.resolve();
  waiting = null;
}

/** Wires the token form and the nav's Token button. */
export function initToken() {
  const form = $('token-form');
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) {
      $('token-error').textContent = 'Enter the token.';
      return;
    }
    setToken(token);
    $('token').value = '';
    if (waiting) tokenWorks();
    else {
      $('token-error').textContent = '';
      hideForm();
    }
  });
  $('token-forget').addEventListener('click', () => {
    setToken(null);
    $('token').value = '';
    $('token-forget').hidden = true;
    $('token').focus();
    $('token-error').textContent = 'Token forgotten: this tab asks for it again when the node needs it.';
  });
  $('token-cancel').addEventListener('click', () => hideForm());
  form.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && !waiting) {
      hideForm();
      $('token-button').focus();
    }
  });
  $('token-button').setAttribute('aria-expanded', 'false');
  $('token-button').addEventListener('click', () => {
    if (waiting) $('token').focus();
    else if (!form.hidden) hideForm();
    else showForm('', false);
  });
}
