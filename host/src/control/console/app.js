// app.js — the entry point of the runnel web console: the hash router
// (#/ overview, #/d/NAME a deployment, #/cluster), the top nav, and the
// Deployments overview and Cluster pages. The deployment page is in
// deployment.js, the SVG charts in chart.js, DOM and format helpers in ui.js,
// and the API client with the token form in api.js.

import { api, initToken } from './api.js';
import { deploymentPage } from './deployment.js';
import {
  h, setText, num, rate, ago, cell, numCell, thead, wrap, syncRows, poll,
  clearErrors, badge, stateName, deploymentState,
} from './ui.js';

const main = document.getElementById('main');
let stopPage = null;

// --- the router ---------------------------------------------------------------

function route(ev) {
  const hash = location.hash || '#/';
  if (!hash.startsWith('#/')) return; // an in-page anchor, not a page
  if (stopPage) stopPage();
  stopPage = null;
  clearErrors();
  main.replaceChildren();
  const m = hash.match(/^#\/d\/([^/?#]+)$/);
  let page = 'overview';
  if (m) {
    let name = m[1];
    try {
      name = decodeURIComponent(name);
    } catch {
      /* keep it as written */
    }
    page = 'deployment';
    stopPage = deploymentPage(main, name);
    document.title = `${name} — runnel console`;
  } else if (hash === '#/cluster') {
    page = 'cluster';
    stopPage = clusterPage(main);
    document.title = 'Cluster — runnel console';
  } else {
    stopPage = overviewPage(main);
    document.title = 'Deployments — runnel console';
  }
  for (const a of document.querySelectorAll('.nav-links a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  // After a navigation (not the first load), move focus to the new page's heading.
  if (ev) main.querySelector('h1')?.focus();
}

// --- the overview -------------------------------------------------------------

const OVERVIEW_COLUMNS = [
  ['Name'], ['Version', 'num'], ['State'], ['In/s', 'num'], ['Out/s', 'num'], ['Lag', 'num'],
  ['Dead letters', 'num'], ['Traps', 'num'], ['Last error'],
];

const nameLink = (name) => h('a', { href: `#/d/${encodeURIComponent(name)}` }, name);

/** Each deployment's states on the nodes that report it. */
function statesByDeployment(nodes) {
  const out = new Map();
  for (const n of Array.isArray(nodes) ? nodes : []) {
    for (const d of n.deployments || []) {
      if (!out.has(d.name)) out.set(d.name, []);
      out.get(d.name).push(stateName(d.state));
    }
  }
  return out;
}

function overviewRow(d, states) {
  const c = d.cluster || {};
  const state = deploymentState(d, states.get(d.name) || []);
  return [
    cell(d.name, 'name', '', nameLink),
    numCell(d.version),
    cell(state, 'state', '', badge),
    numCell(c.in_per_s, rate),
    numCell(c.out_per_s, rate),
    numCell(c.lag),
    numCell(c.dead_lettered),
    numCell(c.traps),
    cell(c.last_error || '', 'error-text', c.last_error || ''),
  ];
}

function overviewPage(root) {
  const tbody = h('tbody');
  const summary = h('p', { class: 'muted', 'aria-live': 'polite' });
  const empty = h('p', { class: 'empty', hidden: true },
    'No deployments yet. Deploy one with ', h('code', {}, 'runnel deploy'), ' or ',
    h('code', {}, 'PUT /v1/deployments/{name}'), '.');
  const table = h('table', { id: 'deployments' }, h('caption', { class: 'sr-only' }, 'Deployments'), thead(OVERVIEW_COLUMNS), tbody);
  const tableWrap = wrap(table, 'Deployments');
  root.append(h('section', { id: 'overview', 'aria-labelledby': 'overview-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'overview-title', tabindex: '-1' }, 'Deployments'), summary),
    tableWrap, empty));

  const poller = poll('overview', 2000, async () => {
    const [list, nodes] = await Promise.all([api('/v1/deployments'), api('/v1/cluster').catch(() => [])]);
    const deployments = Array.isArray(list) ? list : [];
    const states = statesByDeployment(nodes);
    syncRows(tbody, deployments, 'deployment', (d) => d.name, (d) => overviewRow(d, states));
    empty.hidden = deployments.length > 0;
    tableWrap.hidden = deployments.length === 0;
    const running = deployments.filter((d) => deploymentState(d, states.get(d.name) || []) === 'running').length;
    setText(summary, deployments.length ? `${num(deployments.length)} deployment${deployments.length === 1 ? '' : 's'}, ${num(running)} running` : '');
  });
  return poller.stop;
}

// --- the cluster --------------------------------------------------------------

/** Partitions as "topic [0, 1, 2]", by topic. */
function partitionList(parts) {
  const byTopic = new Map();
  for (const p of parts || []) {
    if (!byTopic.has(p.topic)) byTopic.set(p.topic, []);
    byTopic.get(p.topic).push(p.partition);
  }
  const out = [...byTopic].map(([t, ps]) => `${t} [${ps.sort((a, b) => a - b).join(', ')}]`);
  return out.length ? out.join('; ') : 'none';
}

function isThisNode(api) {
  try {
    return new URL(api).host === location.host;
  } catch {
    return false;
  }
}

function clusterPage(root) {
  const nodesBody = h('tbody');
  const runsBody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, 'No node has reported in the last 10 seconds.');
  const summary = h('p', { class: 'muted', 'aria-live': 'polite' });
  root.append(h('section', { id: 'cluster', 'aria-labelledby': 'cluster-title' },
    h('div', { class: 'page-head' }, h('h1', { id: 'cluster-title', tabindex: '-1' }, 'Cluster'), summary),
    h('h2', {}, 'Nodes'),
    wrap(h('table', { id: 'nodes' }, thead([['Node'], ['API address'], ['Last report'], ['Deployments', 'num']]), nodesBody), 'Nodes'),
    empty,
    h('h2', {}, 'What each node runs'),
    wrap(h('table', { id: 'runs' }, thead([['Node'], ['Deployment'], ['Version', 'num'], ['State'], ['Partitions'], ['Records in', 'num'], ['Records out', 'num']]), runsBody), 'What each node runs')));

  const poller = poll('cluster', 2000, async () => {
    const nodes = (await api('/v1/cluster')) || [];
    const list = (Array.isArray(nodes) ? nodes : []).slice().sort((a, b) => String(a.node).localeCompare(String(b.node)));
    syncRows(nodesBody, list, 'node', (n) => n.node, (n) => [
      cell(isThisNode(n.api) ? `${n.node} (this node)` : n.node, 'mono'),
      cell(n.api, 'mono'),
      cell(ago(n.at_ms), '', n.at_ms ? new Date(n.at_ms).toLocaleString() : ''),
      numCell((n.deployments || []).length),
    ]);
    const runs = list.flatMap((n) => (n.deployments || []).map((d) => ({ node: n.node, d })));
    syncRows(runsBody, runs, 'key', (r) => `${r.node}/${r.d.name}`, ({ node, d }) => [
      cell(node, 'mono'),
      cell(d.name, 'name', '', nameLink),
      numCell(d.version),
      cell(stateName(d.state), 'state', d.state && d.state.error ? d.state.error : '', badge),
      cell(partitionList(d.partitions)),
      numCell(d.records_in),
      numCell(d.records_out),
    ]);
    empty.hidden = list.length > 0;
    setText(summary, `${num(list.length)} node${list.length === 1 ? '' : 's'} reporting`);
  });
  return poller.stop;
}

// --- start ----------------------------------------------------------------------

document.getElementById('node-host').textContent = location.host;
initToken();
window.addEventListener('hashchange', route);
route();
