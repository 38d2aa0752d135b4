// ui.js — small helpers of the runnel console: building elements (text goes
// in with textContent only, never innerHTML: names, records, logs and error
// sentences are untrusted bytes), number and time formats, state badges,
// table rows that update in place, the page-wide error area and a poller.

/** An element: attrs (class, on<event>, others as attributes), then children (nodes or text). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c != null && c !== false) el.append(c);
  return el;
}

/** Sets an element's text only when it changes (no needless live-region announcements). */
export function setText(el, text) {
  const t = String(text ?? '');
  if (el.textContent !== t) el.textContent = t;
}

const ints = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const small = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
/** An integer with thousands separators; a dash when unknown. */
export const num = (n) => (n == null || !Number.isFinite(Number(n)) ? '—' : ints.format(n));
/** A rate per second: one decimal under 10. */
export const rate = (n) =>
  n == null || !Number.isFinite(Number(n)) ? '—' : (Math.abs(n) < 10 ? small : ints).format(n);
/** A digest without its sha256: prefix, cut to 12 hex digits. */
export const shortDigest = (d) => (d ? String(d).replace(/^sha256:/, '').slice(0, 12) : '—');
export const dateTime = (ms) => (ms == null ? '—' : new Date(ms).toLocaleString());
/** HH:MM:SS.mmm, local time. */
export function clock(ms) {
  const d = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
export function ago(ms) {
  if (ms == null) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}
/** A deployment's outputs as a list (the API gives one topic or several). */
export const topics = (t) => (Array.isArray(t) ? t : t == null ? [] : [t]);

// --- states ---------------------------------------------------------------

/** The name of a state: a string ("paused", "not running here") or a tagged object {"state": ...}. */
export const stateName = (s) => (s && typeof s === 'object' ? String(s.state) : s == null ? null : String(s));
const SEVERITY = { failed: 5, backing_off: 4, stopped: 3, starting: 2, running: 1 };
/** The most worrying of several nodes' states. */
export function worstState(states) {
  let worst = null;
  for (const s of states) if (s && (worst == null || (SEVERITY[s] || 0) > (SEVERITY[worst] || 0))) worst = s;
  return worst;
}
/** What to call a deployment's state: paused, else this node's state, else the cluster's. */
export function deploymentState(summary, clusterStates) {
  if (summary.paused) return 'paused';
  if (summary.state && typeof summary.state === 'object') return stateName(summary.state);
  return worstState(clusterStates) ?? stateName(summary.state) ?? 'unknown';
}
const TONES = { running: 'ok', starting: 'info', backing_off: 'warn', failed: 'bad', paused: 'idle', stopped: 'idle' };
export const badgeClass = (state) => `badge tone-${TONES[state] || 'idle'}`;
export const badge = (state) => h('span', { class: badgeClass(state) }, state);

// --- tables -----------------------------------------------------------------

/** A header row of [label, class] columns. */
export const thead = (cols) =>
  h('thead', {}, h('tr', {}, cols.map(([label, cls]) => h('th', { scope: 'col', class: cls }, label))));
/** A table in a horizontally scrolling, keyboard-focusable region. */
export const wrap = (table, label) =>
  h('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: '0' }, table);
/** A cell: its text, a class, a title, and optionally make() building its content (nodes) from that text. */
export const cell = (text, cls = '', title = '', make = null) => ({ text: String(text ?? '—'), cls, title, make });
export const numCell = (n, format = num) => cell(format(n), 'num');

const shown = new WeakMap(); // td -> the text it was last built from
function fillRow(tr, cells) {
  while (tr.cells.length > cells.length) tr.lastElementChild.remove();
  cells.forEach((c, i) => {
    const td = tr.cells[i] || tr.appendChild(document.createElement('td'));
    if (td.className !== c.cls) td.className = c.cls;
    if (td.title !== c.title) td.title = c.title;
    if (shown.get(td) !== c.text) {
      shown.set(td, c.text);
      td.replaceChildren(...[].concat(c.make ? c.make(c.text) : c.text));
    }
  });
}

/**
 * Makes tbody's rows those of items, in order, keyed by data-<attr>: rows are
 * kept and only changed cells rebuilt, so focus (a link in a row) survives.
 */
export function syncRows(tbody, items, attr, keyOf, cellsOf, rowClass = () => '') {
  const old = new Map([...tbody.rows].map((r) => [r.dataset[attr], r]));
  let prev = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let tr = old.get(key);
    old.delete(key);
    if (!tr) {
      tr = document.createElement('tr');
      tr.dataset[attr] = key;
    }
    const cls = rowClass(item);
    if (tr.className !== cls) tr.className = cls;
    fillRow(tr, cellsOf(item));
    const want = prev ? prev.nextElementSibling : tbody.firstElementChild;
    if (tr !== want) tbody.insertBefore(tr, want);
    prev = tr;
  }
  for (const r of old.values()) r.remove();
}

// --- errors and polling -----------------------------------------------------

const errors = new Map(); // source -> sentence
/** Shows (or with null clears) one source's error sentence in #error. */
export function setError(source, message) {
  if (message) errors.set(source, message);
  else errors.delete(source);
  const el = document.getElementById('error');
  const text = [...new Set(errors.values())].join(' ');
  setText(el, text);
  el.hidden = !text;
}
export function clearErrors() {
  errors.clear();
  setError('', null);
}

/**
 * Runs fn now and then every ms after it ends (never two at once), showing
 * its failure in #error under `source` and clearing it when it works again.
 * Returns { now() to run it at once, stop() }.
 */
export function poll(source, ms, fn) {
  let timer = null;
  let stopped = false;
  let running = false;
  let again = false;
  async function run() {
    clearTimeout(timer);
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
      if (!stopped) setError(source, null);
    } catch (e) {
      if (!stopped) setError(source, e.network ? `${e.message} Retrying every ${ms / 1000} s.` : e.message);
    }
    running = false;
    if (stopped) return;
    if (again) {
      again = false;
      run();
    } else timer = setTimeout(run, ms);
  }
  run();
  return {
    now: run,
    stop() {
      stopped = true;
      clearTimeout(timer);
      setError(source, null);
    },
  };
}
