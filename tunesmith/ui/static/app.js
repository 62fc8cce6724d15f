/* tunesmith ui: the API client (bearer key from localStorage), a hash router and small DOM helpers. */
"use strict";
const KEY = "tunesmith-api-key";
const screens = {};

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

function headers(extra) {
  const key = localStorage.getItem(KEY);
  return Object.assign(key ? { Authorization: "Bearer " + key } : {}, extra || {});
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message; box.hidden = false;
  clearTimeout(showError.timer); showError.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

/* fetch JSON; a 401 asks for the server's API key once and retries. Errors are shown and thrown. */
async function api(path, opts) {
  opts = opts || {};
  const init = { method: opts.method || "GET", headers: headers(opts.body ? { "Content-Type": "application/json" } : {}) };
  if (opts.body) init.body = JSON.stringify(opts.body);
  let res = await fetch(path, init);
  if (res.status === 401 && !opts.retried) {
    const key = prompt("This server needs an API key (tunesmith ui --api-key-file):");
    if (key) { localStorage.setItem(KEY, key.trim()); return api(path, Object.assign({}, opts, { retried: true })); }
  }
  const text = await res.text();
  if (!res.ok) {
    let msg = text;
    try { msg = JSON.parse(text).error.message; } catch (e) { /* not JSON: show the text */ }
    showError(`${res.status}: ${msg}`);
    throw new Error(msg);
  }
  return opts.raw ? text : JSON.parse(text);
}

/* Server-sent events over fetch (EventSource cannot send the API key). onEvent(name, data); returns a stop(). */
function stream(path, onEvent) {
  const ctrl = new AbortController();
  (async () => {
    const res = await fetch(path, { headers: headers(), signal: ctrl.signal });
    if (!res.ok) { showError(`${res.status}: event stream ${path}`); return; }
    const reader = res.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(name, data === "[DONE]" ? data : JSON.parse(data));
      }
    }
  })().catch((e) => { if (e.name !== "AbortError") showError(String(e)); });
  return () => ctrl.abort();
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString() : v.toFixed(digits === undefined ? 4 : digits);
  return String(v);
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "-";
  return s < 120 ? `${s.toFixed(1)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;
}

let cleanup = [];
function route() {
  cleanup.forEach((f) => f()); cleanup = [];
  const [name, ...rest] = (location.hash.replace(/^#\//, "") || "runs").split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + name);
  const view = document.getElementById("view");
  view.replaceChildren();
  const screen = screens[name] || screens.runs;
  screen(view, ...rest.map(decodeURIComponent)).catch((e) => view.append(h("p", { class: "err" }, String(e.message || e))));
}
window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
