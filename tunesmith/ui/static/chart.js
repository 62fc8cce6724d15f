/* A small SVG line chart (no library): several series of [x, y] points on shared axes.
   lineChart(el, [{name, points, color}], {title, xLabel}) draws into el and returns nothing. Each series is a
   <polyline data-series=NAME data-points=N> plus one <circle> per point (up to 400), so a test can count them. */
"use strict";
const COLORS = ["#2f6fd0", "#d0622f", "#1e7b34", "#8a3fd0", "#b3261e", "#0f8a8a", "#a07800"];

function niceTicks(lo, hi, n) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (lo === hi) { lo -= 1; hi += 1; }
  const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function fmtTick(v) {
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(1) : String(+v.toPrecision(4));
}

function lineChart(el, series, opts) {
  opts = opts || {};
  const W = opts.width || 560, H = opts.height || 260, L = 56, R = 12, T = 24, B = 32;
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (!all.length) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  if (x0 === x1) { x1 = x0 + 1; }
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("width", "100%");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.appendChild(node); return node;
  };
  add("text", { x: L, y: 15, "font-weight": "600" }, opts.title || "");
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  for (const v of niceTicks(y0, y1, 4)) {
    add("line", { x1: L - 4, y1: sy(v), x2: W - R, y2: sy(v), stroke: "#eef1f5" });
    add("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, fmtTick(v));
  }
  for (const v of niceTicks(x0, x1, 6)) add("text", { x: sx(v), y: H - B + 14, "text-anchor": "middle" }, fmtTick(v));
  add("text", { x: W - R, y: H - 4, "text-anchor": "end" }, opts.xLabel || "step");
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    add("polyline", {
      points: s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 1.6, "data-series": s.name, "data-points": s.points.length,
    });
    if (s.points.length <= 400) {
      for (const p of s.points) add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: color, "data-series": s.name });
    }
  });
  el.replaceChildren(svg);
  const legend = document.createElement("div"); legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${s.color || COLORS[i % COLORS.length]}"></i>`;
    item.append(s.name); legend.appendChild(item);
  });
  el.appendChild(legend);
}

/* metrics.jsonl rows -> {key: [[step, value], ...]} for every numeric key that is a loss or a score. */
function metricSeries(rows) {
  const out = {};
  const skip = new Set(["step", "epoch", "lr", "tokens_per_s", "step_s", "total_steps"]);
  for (const row of rows) {
    for (const [k, v] of Object.entries(row)) {
      if (skip.has(k) || typeof v !== "number" || !isFinite(v)) continue;
      (out[k] = out[k] || []).push([row.step, v]);
    }
  }
  return out;
}
