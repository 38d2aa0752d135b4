// deployment.js — the page of one deployment in the runnel console (#/d/NAME):
// its state and actions (pause, resume, delete with a <dialog>, roll back),
// the swap form (upload a module and/or a model, then PUT a new version with
// the current settings), partitions, version history, throughput and lag
// charts, the last dead letters and the live logs. Status and logs refresh
// every 2 s, the series and dead letters every 10 s.

import { api } from './api.js';
import { lineChart } from './chart.js';
import {
  h, setText, num, rate, shortDigest, dateTime, clock, topics, cell, numCell, thead, wrap,
  syncRows, poll, setError, badgeClass, stateName, deploymentState,
} from './ui.js';

const MAX_LOG_LINES = 1000;

/** The PUT body of a new version: the deployment's settings, its current version's, and the new digests. */
function deploymentRequest(rec, cur, module, model) {
  const req = {
    module,
    input: rec.input,
    output: rec.output,
    config: cur.config || {},
    memory_mib: cur.memory_mib,
    timeout_ms: cur.timeout_ms,
    max_outputs_per_record: cur.max_outputs_per_record,
    max_output_mib: cur.max_output_mib,
    batch_size: rec.batch_size,
    linger_ms: rec.linger_ms,
    provenance: cur.provenance || 'headers', // absent in a version means headers
  };
  // Absent stays absent: a new version must name the same dead letter, stores.
  if (model) req.model = model;
  if (rec.dead_letter != null) req.dead_letter = rec.dead_letter;
  if (rec.workers != null) req.workers = rec.workers;
  if (rec.stores && rec.stores.length) req.stores = rec.stores;
  return req;
}

/** Builds the page in root; returns a function that stops its polling. */
export function deploymentPage(root, name) {
  const path = `/v1/deployments/${encodeURIComponent(name)}`;
  let record = null; // GET /v1/deployments/{name}, read for a delete or a swap
  let epoch = 0; // bumped by each action, so a status read from before it is dropped

  // --- the DOM ---
  const el = {
    version: h('span', { id: 'version', class: 'num-inline', 'aria-live': 'polite' }, '—'),
    state: h('span', { id: 'state', class: badgeClass(''), 'aria-live': 'polite' }, '…'),
    detail: h('p', { class: 'state-detail', 'aria-live': 'polite', hidden: true }),
    io: h('p', { class: 'muted io' }),
    totals: h('p', { class: 'muted' }),
    result: h('p', { id: 'action-result', role: 'status', class: 'result' }),
    rollbackTo: h('select', { id: 'rollback-to' }),
    swapResult: h('p', { id: 'swap-result', role: 'status', class: 'result' }),
    partitions: h('tbody'),
    versions: h('tbody'),
    dead: h('tbody'),
    deadTopic: h('span', { class: 'mono' }),
    deadEmpty: h('p', { class: 'empty', hidden: true }, 'No dead letters.'),
    partsEmpty: h('p', { class: 'empty', hidden: true }, 'No node reports a partition of it.'),
    logs: h('ol', { id: 'logs', class: 'logs', role: 'log', 'aria-label': 'Logs, newest at the bottom', tabindex: '0' }),
    logsEmpty: h('p', { class: 'empty' }, 'No log lines in the last 10 minutes yet.'),
  };
  const button = (id, label, onclick, cls = '') => h('button', { type: 'button', id, class: cls, onclick }, label);
  const moduleFile = h('input', { type: 'file', id: 'module-file', accept: '.wasm,application/wasm' });
  const modelFile = h('input', { type: 'file', id: 'model-file' });
  const swapSubmit = h('button', { type: 'submit', id: 'swap-submit', class: 'primary' }, 'Upload and swap');
  const rollbackButton = button('rollback', 'Roll back', rollback);
  const dialog = deleteDialog();
  const throughputFig = h('figure', { id: 'chart-throughput', class: 'chart-figure' }, h('figcaption', {}, 'Throughput, records per second'));
  const lagFig = h('figure', { id: 'chart-lag', class: 'chart-figure' }, h('figcaption', {}, 'Lag, records behind'));
  const panel = (title, ...children) => h('section', { class: 'panel' }, h('h2', {}, title), ...children);

  root.append(h('section', { id: 'deployment', 'data-name': name, 'aria-labelledby': 'deployment-title' },
    h('div', { class: 'page-head' },
      h('h1', { id: 'deployment-title', tabindex: '-1' }, name),
      h('p', { class: 'facts' }, h('span', {}, 'Version ', el.version), h('span', {}, 'State ', el.state))),
    el.io, el.totals, el.detail,
    h('div', { class: 'actions', role: 'group', 'aria-label': 'Actions' },
      button('pause', 'Pause', () => act(() => setPaused(true))),
      button('resume', 'Resume', () => act(() => setPaused(false))),
      button('delete', 'Delete…', openDelete, 'danger'),
      h('span', { class: 'rollback' }, h('label', { for: 'rollback-to' }, 'Roll back to'), el.rollbackTo, rollbackButton)),
    el.result,
    h('div', { class: 'charts' }, throughputFig, lagFig),
    panel('Partitions', wrap(h('table', { id: 'partitions' }, thead([['Topic'], ['Partition', 'num'], ['Committed offset', 'num'], ['End offset', 'num'], ['Lag', 'num'], ['Node']]), el.partitions), 'Partitions'), el.partsEmpty),
    panel('Swap the function',
      h('form', { id: 'swap-form', class: 'swap', onsubmit: swap },
        h('p', { class: 'hint' }, 'Upload a new module, a new model, or both: they become a new version with the current settings.'),
        h('div', { class: 'field' }, h('label', { for: 'module-file' }, 'Module (.wasm)'), moduleFile),
        h('div', { class: 'field' }, h('label', { for: 'model-file' }, 'Model'), modelFile),
        h('div', { class: 'buttons' }, swapSubmit),
        el.swapResult)),
    panel('Versions', wrap(h('table', { id: 'versions' }, thead([['Version', 'num'], ['Module'], ['Model'], ['Reason'], ['Created']]), el.versions), 'Versions')),
    panel(h('span', {}, 'Dead letters ', h('span', { class: 'muted small' }, 'last 50 in ', el.deadTopic)),
      wrap(h('table', { id: 'dead-letters' }, thead([['Partition', 'num'], ['Offset', 'num'], ['Time'], ['Kind'], ['Error'], ['Source'], ['Key'], ['Value'], ['Size', 'num']]), el.dead), 'Dead letters'), el.deadEmpty),
    panel('Logs', el.logs, el.logsEmpty),
    dialog.el));

  const throughput = lineChart(throughputFig, {
    series: [{ key: 'in_per_s', label: 'in', cls: 's-in' }, { key: 'out_per_s', label: 'out', cls: 's-out' }],
    unit: 'records/s', format: rate,
  });
  const lag = lineChart(lagFig, { series: [{ key: 'lag', label: 'lag', cls: 's-lag' }], unit: 'records', format: num, integer: true, empty: 'No lag reported yet' });

  // --- status ---
  function renderStatus(st) {
    const nodes = Array.isArray(st.cluster) ? st.cluster : [];
    const state = deploymentState(st, nodes.map((c) => stateName(c.state)));
    setText(el.state, state);
    el.state.className = badgeClass(state);
    setText(el.version, st.version);
    setText(el.io, `Reads ${(st.input || []).join(', ')} → writes ${topics(st.output).join(', ')}` +
      (nodes.length ? ` · on ${nodes.map((c) => c.node).join(', ')}` : ' · no node runs it'));
    const sum = (k) => nodes.reduce((a, c) => a + (Number(c[k]) || 0), 0);
    setText(el.totals, `Records in ${num(sum('records_in'))} · out ${num(sum('records_out'))} · dead-lettered ${num(sum('dead_lettered'))}`);
    const local = st.node || {};
    const problems = [];
    for (const s of [st.state, ...nodes.map((c) => c.state)]) {
      if (s && typeof s === 'object' && s.error) problems.push(`${s.state}: ${s.error}${s.retry_in_ms != null ? ` (retry in ${rate(s.retry_in_ms / 1000)} s)` : ''}`);
    }
    if (local.error) problems.push(`Not running here: ${local.error}`);
    if (local.status && local.status.last_error) problems.push(`Last error here: ${local.status.last_error}`);
    setText(el.detail, [...new Set(problems)].join(' · '));
    el.detail.hidden = problems.length === 0;

    const parts = nodes.flatMap((c) => (c.partitions || []).map((p) => ({ ...p, node: c.node })));
    parts.sort((a, b) => String(a.topic).localeCompare(String(b.topic)) || a.partition - b.partition);
    syncRows(el.partitions, parts, 'key', (p) => `${p.topic}/${p.partition}/${p.node}`, (p) => [
      cell(p.topic, 'mono'), numCell(p.partition), numCell(p.offset), numCell(p.high_watermark), numCell(p.lag), cell(p.node, 'mono'),
    ]);
    el.partsEmpty.hidden = parts.length > 0;
    renderVersions(st.versions || [], st.version);
  }

  function renderVersions(versions, current) {
    const newest = versions.slice().sort((a, b) => b.version - a.version);
    syncRows(el.versions, newest, 'version', (v) => v.version, (v) => [
      cell(v.version === current ? `${v.version} current` : v.version, 'num', '', () =>
        v.version === current ? [String(v.version), ' ', h('span', { class: 'badge tone-info' }, 'current')] : String(v.version)),
      cell(shortDigest(v.module), 'mono', v.module ? `sha256:${v.module}` : ''),
      cell(v.model ? shortDigest(v.model) : '—', 'mono', v.model ? `sha256:${v.model}` : ''),
      cell(v.reason),
      cell(dateTime(v.created_ms), 'nowrap'),
    ], (v) => (v.version === current ? 'current' : ''));
    // The rollback choices: every kept version but the current one, newest first.
    const choices = newest.filter((v) => v.version !== current);
    const sig = choices.map((v) => `${v.version}:${v.reason}`).join('|');
    if (el.rollbackTo.dataset.sig !== sig) {
      const keep = el.rollbackTo.value;
      el.rollbackTo.dataset.sig = sig;
      el.rollbackTo.replaceChildren(...(choices.length
        ? choices.map((v) => h('option', { value: v.version }, `${v.version} — ${v.reason}, ${dateTime(v.created_ms)}`))
        : [h('option', { value: '' }, 'no other version kept')]));
      if (choices.some((v) => String(v.version) === keep)) el.rollbackTo.value = keep;
    }
    rollbackButton.disabled = choices.length === 0;
  }

  async function refreshStatus() {
    const started = epoch;
    const st = await api(`${path}/status`);
    if (started === epoch && st) renderStatus(st);
  }

  // --- actions ---
  async function act(fn) {
    setError('action', null);
    setText(el.result, '');
    epoch += 1;
    try {
      setText(el.result, await fn());
    } catch (e) {
      setError('action', e.message);
    }
    epoch += 1;
    pollers.status.now();
  }

  async function setPaused(paused) {
    const out = await api(`${path}/${paused ? 'pause' : 'resume'}`, { method: 'POST' });
    if (paused) {
      setText(el.state, 'paused'); // the record says so now; a resume's state comes with the next status
      el.state.className = badgeClass('paused');
    }
    return paused ? `Paused (version ${out?.version ?? '?'}).` : `Resumed (version ${out?.version ?? '?'}).`;
  }

  function rollback() {
    const to = Number(el.rollbackTo.value);
    if (!to) return;
    act(async () => {
      const out = await api(`${path}/rollback`, { method: 'POST', json: { to } });
      return `Rolled back to version ${out.to}: now version ${out.version}.`;
    });
  }

  // --- delete ---
  function deleteDialog() {
    const keep = h('input', { type: 'radio', name: 'delete-state', id: 'delete-state-keep', value: 'keep', checked: true });
    const drop = h('input', { type: 'radio', name: 'delete-state', id: 'delete-state-drop', value: 'drop' });
    const stores = h('span', { class: 'mono' });
    const fieldset = h('fieldset', { id: 'delete-state', hidden: true },
      h('legend', {}, 'Its state, in the stores ', stores),
      h('div', { class: 'choice' }, keep, h('label', { for: 'delete-state-keep' }, 'Keep it: a deployment of the same name restores from it')),
      h('div', { class: 'choice' }, drop, h('label', { for: 'delete-state-drop' }, 'Drop it: its changelog topics are deleted, for good')));
    const status = h('p', { role: 'status', class: 'result' });
    const no = h('button', { type: 'button', id: 'confirm-delete-no', autofocus: true }, 'Cancel');
    const yes = h('button', { type: 'button', id: 'confirm-delete-yes', class: 'danger' }, 'Delete');
    const dlg = h('dialog', { id: 'confirm-delete', 'aria-labelledby': 'confirm-delete-title' },
      h('h2', { id: 'confirm-delete-title' }, `Delete ${name}?`),
      h('p', {}, 'Every node stops it, committing its offsets. Its version history goes with it.'),
      fieldset, status,
      h('div', { class: 'buttons' }, no, yes));
    no.addEventListener('click', () => dlg.close());
    yes.addEventListener('click', async () => {
      const q = fieldset.hidden ? '' : `?state=${drop.checked ? 'drop' : 'keep'}`;
      yes.disabled = true;
      setText(status, drop.checked && !fieldset.hidden ? 'Deleting… waiting for every node to stop it (up to 30 s).' : 'Deleting…');
      try {
        await api(`${path}${q}`, { method: 'DELETE' });
        dlg.close();
        location.hash = '#/';
      } catch (e) {
        dlg.close();
        setError('action', e.message);
      } finally {
        yes.disabled = false;
        setText(status, '');
      }
    });
    return {
      el: dlg,
      open(storeNames) {
        setText(stores, storeNames.join(', '));
        fieldset.hidden = storeNames.length === 0;
        keep.checked = true;
        dlg.showModal();
      },
    };
  }

  async function openDelete() {
    setError('action', null);
    try {
      if (!record) record = await api(path);
      dialog.open(record.stores || []);
    } catch (e) {
      setError('action', e.message);
    }
  }

  // --- swap ---
  async function swap(ev) {
    ev.preventDefault();
    const module = moduleFile.files[0];
    const model = modelFile.files[0];
    const say = (text) => setText(el.swapResult, text);
    if (!module && !model) return say('Choose a module, a model, or both.');
    swapSubmit.disabled = true;
    setError('swap', null);
    try {
      say('Reading the current settings…');
      record = await api(path);
      const cur = (record.versions || []).find((v) => v.version === record.current);
      if (!cur) throw new Error(`Deployment ${name} has no current version to swap from.`);
      let modelDigest = cur.model ? `sha256:${cur.model}` : null;
      if (model) {
        say('Uploading model…');
        modelDigest = (await api('/v1/models', { method: 'POST', body: model })).digest;
      }
      let moduleDigest = `sha256:${cur.module}`;
      if (module) {
        say('Uploading module…');
        // The node starts the module to check it: with the current config, and the model.
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(cur.config || {})) q.append('config', `${k}=${v}`);
        if (modelDigest) q.append('model', modelDigest);
        const qs = q.toString();
        moduleDigest = (await api(`/v1/modules${qs ? `?${qs}` : ''}`, { method: 'POST', body: module })).digest;
      }
      say('Deploying the new version…');
      const out = await api(path, { method: 'PUT', json: deploymentRequest(record, cur, moduleDigest, modelDigest) });
      say(`Swapped: version ${out.version}`);
      ev.target.reset();
    } catch (e) {
      say(e.message);
      setError('swap', e.message);
    } finally {
      swapSubmit.disabled = false;
      epoch += 1;
      pollers.status.now();
    }
  }

  // --- series, dead letters, logs ---
  async function refreshSeries() {
    const s = await api(`${path}/series`);
    const points = (s && s.points) || [];
    throughput.update(points);
    lag.update(points);
  }

  async function refreshDead() {
    const out = (await api(`${path}/dead-letters?limit=50`)) || {};
    const list = out.dead_letters || [];
    setText(el.deadTopic, out.topic || '');
    syncRows(el.dead, list, 'key', (d) => `${d.partition}:${d.offset}`, (d) => [
      numCell(d.partition), numCell(d.offset), cell(dateTime(d.timestamp_ms), 'nowrap'), cell(d.kind, 'nowrap'),
      cell(d.error ?? '—', 'error-text', d.error || ''),
      cell(d.source_topic != null ? `${d.source_topic} [${d.source_partition ?? '?'}] @${num(d.source_offset)}` : '—', 'mono nowrap'),
      cell(d.key_preview ?? '—', 'preview mono', d.key_preview || ''),
      cell(d.value_preview ?? '—', 'preview mono', d.value_preview || ''),
      numCell(d.value_size),
    ]);
    el.deadEmpty.hidden = list.length > 0;
  }

  const seen = new Set();
  const order = [];
  let lastAt = null;
  function logLine(l) {
    const kind = l.kind === 'event' ? 'event' : 'log';
    const level = ['info', 'warn', 'error'].includes(l.level) ? l.level : 'info';
    return h('li', { class: `line kind-${kind} level-${level}` },
      h('time', { datetime: new Date(l.at_ms).toISOString() }, clock(l.at_ms)), ' ',
      h('span', { class: 'node' }, l.node), ' ',
      h('span', { class: 'tag' }, kind === 'event' ? 'event' : l.stream || 'log'), ' ',
      h('span', { class: 'level' }, level), ' ',
      h('span', { class: 'msg' }, l.message));
  }
  async function refreshLogs() {
    const q = lastAt == null ? 'since=10m&limit=500' : `since_ms=${lastAt}&limit=500`;
    const out = (await api(`${path}/logs?${q}`)) || {};
    const list = el.logs;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 32;
    const fresh = [];
    for (const l of out.lines || []) {
      const key = `${l.at_ms}\n${l.node}\n${l.message}`;
      if (seen.has(key)) continue;
      seen.add(key);
      order.push(key);
      fresh.push(logLine(l));
      if (lastAt == null || l.at_ms > lastAt) lastAt = l.at_ms;
    }
    if (!fresh.length) return;
    list.append(...fresh);
    while (list.childElementCount > MAX_LOG_LINES) {
      list.firstElementChild.remove();
      seen.delete(order.shift());
    }
    el.logsEmpty.hidden = true;
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  const pollers = {
    status: poll('status', 2000, refreshStatus),
    series: poll('series', 10000, refreshSeries),
    dead: poll('dead-letters', 10000, refreshDead),
    logs: poll('logs', 2000, refreshLogs),
  };
  return () => {
    for (const p of Object.values(pollers)) p.stop();
    throughput.destroy();
    lag.destroy();
    if (dialog.el.open) dialog.el.close();
  };
}
