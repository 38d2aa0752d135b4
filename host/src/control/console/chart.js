// chart.js — a small SVG line chart for the runnel console, no library: time
// on x (the last 15 minutes, local clock labels), values from 0 on y, one line
// per series with a gap where a value is null, and a dot at the latest value.
// It draws at its box's width in pixels and draws again when that changes.

const NS = 'http://www.w3.org/2000/svg';
const WINDOW_MS = 15 * 60 * 1000;
const TICK_MS = 5 * 60 * 1000;
const HEIGHT = 200;
const M = { top: 24, right: 14, bottom: 40, left: 58 };

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text != null) el.textContent = text;
  return el;
}

/** A step of 1, 2 or 5 times a power of ten giving about `ticks` ticks up to max. */
function niceStep(max, ticks) {
  const raw = max / ticks;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

const hhmm = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });

/**
 * A chart in `figure` (which already holds its figcaption). options:
 * series [{key, label, cls}], unit (the y axis title), format (tick labels),
 * integer (y ticks are whole numbers), empty (text when there is no data).
 * Returns { update(points), destroy() }; points are [{at_ms, <key>: number|null}].
 */
export function lineChart(figure, { series, unit, format, integer = false, empty = 'No data yet' }) {
  const box = document.createElement('div');
  box.className = 'chart-box';
  const legend = document.createElement('ul');
  legend.className = 'legend';
  for (const s of series) {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = `swatch ${s.cls}`;
    swatch.setAttribute('aria-hidden', 'true');
    li.append(swatch, s.label);
    legend.append(li);
  }
  figure.append(legend, box);
  let points = [];
  let width = 0;
  const observer = new ResizeObserver((entries) => {
    const w = Math.floor(entries[0].contentRect.width);
    if (w > 0 && w !== width) {
      width = w;
      draw();
    }
  });
  observer.observe(box);

  function draw() {
    const w = Math.max(width || box.clientWidth || 600, 240);
    const pw = w - M.left - M.right;
    const ph = HEIGHT - M.top - M.bottom;
    const end = points.length ? points[points.length - 1].at_ms : Date.now();
    const start = end - WINDOW_MS;
    const shown = points.filter((p) => p.at_ms >= start);
    const values = series.flatMap((s) => shown.map((p) => p[s.key]).filter((v) => v != null && Number.isFinite(v)));
    const max = Math.max(0, ...values);
    let step = max > 0 ? niceStep(max, 4) : 1;
    if (integer) step = Math.max(1, Math.round(step));
    const top = max > 0 ? Math.ceil(max / step) * step : step * 4;
    const x = (t) => M.left + ((t - start) / WINDOW_MS) * pw;
    const y = (v) => M.top + ph - (v / top) * ph;

    const root = svg('svg', { width: w, height: HEIGHT, viewBox: `0 0 ${w} ${HEIGHT}`, role: 'img', class: 'chart' });
    const latest = series
      .map((s) => {
        const last = [...shown].reverse().find((p) => p[s.key] != null);
        return last ? `${s.label} ${format(last[s.key])}` : null;
      })
      .filter(Boolean);
    root.setAttribute('aria-label', latest.length ? `Last 15 minutes; latest: ${latest.join(', ')} ${unit}` : empty);

    // The y axis: grid lines and labels, and its title.
    for (let v = 0; v <= top + step / 2; v += step) {
      root.append(svg('line', { x1: M.left, x2: M.left + pw, y1: y(v), y2: y(v), class: v === 0 ? 'axis' : 'grid' }));
      root.append(svg('text', { x: M.left - 6, y: y(v) + 4, class: 'tick', 'text-anchor': 'end' }, format(v)));
    }
    root.append(svg('text', { x: M.left, y: 12, class: 'axis-title' }, unit));
    // The x axis: a tick every 5 minutes, on the clock, and its title.
    for (let t = Math.ceil(start / TICK_MS) * TICK_MS; t <= end; t += TICK_MS) {
      root.append(svg('line', { x1: x(t), x2: x(t), y1: M.top + ph, y2: M.top + ph + 4, class: 'axis' }));
      root.append(svg('text', { x: x(t), y: M.top + ph + 17, class: 'tick', 'text-anchor': 'middle' }, hhmm(t)));
    }
    root.append(svg('text', { x: M.left + pw, y: HEIGHT - 4, class: 'axis-title', 'text-anchor': 'end' }, 'local time'));

    if (!values.length) {
      root.append(svg('text', { x: M.left + pw / 2, y: M.top + ph / 2, class: 'empty-text', 'text-anchor': 'middle' }, empty));
    }
    for (const s of series) {
      let d = '';
      let pen = false;
      let last = null;
      for (const p of shown) {
        const v = p[s.key];
        if (v == null || !Number.isFinite(v)) {
          pen = false;
          continue;
        }
        d += `${pen ? 'L' : 'M'}${x(p.at_ms).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
        last = p;
      }
      if (d) root.append(svg('path', { d, class: `line ${s.cls}` }));
      if (last) root.append(svg('circle', { cx: x(last.at_ms), cy: y(last[s.key]), r: 3, class: `dot ${s.cls}` }));
    }
    box.replaceChildren(root);
  }

  draw();
  return {
    update(next) {
      points = Array.isArray(next) ? next : [];
      draw();
    },
    destroy() {
      observer.disconnect();
    },
  };
}
