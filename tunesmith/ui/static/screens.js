/* The screens, one function each: screens.NAME(view, ...route parts). */
"use strict";

function metricCell(m) {
  if (!m) return ["-", "-"];
  const base = m.base === null || m.base === undefined ? "-" : fmt(m.base);
  return [`${m.name} ${fmt(m.tuned)}`, `${base} → ${fmt(m.tuned)}`];
}

screens.runs = async function (view) {
  const data = await api("/ui/api/runs");
  const uniq = (k) => [...new Set(data.runs.map((r) => r[k]).filter(Boolean))].sort();
  const pick = (k, label) => h("select", { name: k, onchange: draw }, h("option", { value: "" }, `${label}: all`), uniq(k).map((v) => h("option", { value: v }, v)));
  const q = h("input", { name: "q", placeholder: "filter by name or model", oninput: draw });
  const selects = [pick("kind", "kind"), pick("method", "method"), pick("status", "status")];
  const body = h("tbody");
  const picked = () => [...body.querySelectorAll("input:checked")].map((c) => c.value).join(",");
  const compareBtn = h("button", { onclick: () => { location.hash = "#/compare/" + picked(); } }, "Compare selected");
  view.append(h("h1", {}, "Runs"), h("div", { class: "filters" }, q, selects, compareBtn));
  view.append(h("table", { id: "runs-table" }, h("thead", {}, h("tr", {}, ["", "name", "kind", "method", "model", "status", "key metric", "base → tuned", "time", "peak MB", "gates"].map((c) => h("th", {}, c)))), body));
  function draw() {
    const want = Object.fromEntries(selects.map((s) => [s.name, s.value]));
    const rows = data.runs.filter((r) => Object.entries(want).every(([k, v]) => !v || r[k] === v) && (r.name + " " + r.model).toLowerCase().includes(q.value.toLowerCase()));
    body.replaceChildren(...rows.map((r) => {
      const [key, delta] = metricCell(r.key_metric);
      const gates = r.gates_passed === null ? "-" : r.gates_passed ? "passed" : "FAILED";
      return h("tr", { "data-run": r.name },
        h("td", {}, h("input", { type: "checkbox", value: r.name })),
        h("td", {}, h("a", { href: "#/run/" + encodeURIComponent(r.name) }, r.name)),
        h("td", {}, r.kind), h("td", {}, r.method || "-"), h("td", {}, r.model || "-"),
        h("td", { class: "status-" + r.status }, r.status), h("td", {}, key), h("td", { class: "num" }, delta),
        h("td", { class: "num" }, fmtSeconds(r.time_s)), h("td", { class: "num" }, fmt(r.peak_memory_mb, 0)), h("td", {}, gates));
    }));
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "No runs match.")));
  }
  draw();
  await startForm(view);
};

async function startForm(view) {
  const { recipes } = await api("/ui/api/recipes");
  const recipe = h("select", { name: "recipe" }, recipes.map((r) => h("option", { value: r }, r)));
  const overrides = h("textarea", { name: "overrides", placeholder: "one override per line, e.g.\nname=my-run\ntrain.max_steps=50" });
  const out = h("span", { class: "muted" });
  const go = async () => {
    const res = await api("/ui/api/runs", { method: "POST", body: { recipe: recipe.value, overrides: overrides.value.split("\n").map((s) => s.trim()).filter(Boolean) } });
    out.textContent = `started ${res.name}`; location.hash = "#/run/" + encodeURIComponent(res.name);
  };
  view.append(h("h2", {}, "Start a run"), h("div", { class: "card" }, h("div", { class: "filters" }, "recipe", recipe, h("button", { onclick: go }, "Start"), out), overrides));
}

function drawCurves(el, rows) {
  const series = metricSeries(rows);
  const loss = Object.keys(series).filter((k) => k.includes("loss"));
  const other = Object.keys(series).filter((k) => !k.includes("loss"));
  const lossBox = el.querySelector("#loss-chart"), otherBox = el.querySelector("#metric-chart");
  lineChart(lossBox, loss.map((k) => ({ name: k, points: series[k] })), { title: "loss" });
  otherBox.hidden = !other.length;  // a run that logs only losses gets no empty card
  if (other.length) lineChart(otherBox, other.map((k) => ({ name: k, points: series[k] })), { title: "metrics" });
}

screens.run = async function (view, name) {
  const d = await api("/ui/api/runs/" + encodeURIComponent(name));
  const row = d.row;
  const status = h("span", { id: "run-status", class: "status-" + row.status }, row.status);
  const act = (what) => async () => { const r = await api(`/ui/api/runs/${encodeURIComponent(name)}/${what}`, { method: "POST" }); status.textContent = r.status; };
  view.append(h("h1", {}, name, " ", status),
    h("div", { class: "filters" }, h("button", { onclick: act("stop") }, "Stop (checkpoint)"), h("button", { class: "secondary", onclick: act("resume") }, "Resume"),
      h("a", { href: "#/rate/" + encodeURIComponent(name) }, "Rate predictions"), h("a", { href: "#/playground/" + encodeURIComponent(name) }, "Open in playground")));
  const [key, delta] = metricCell(row.key_metric);
  const facts = [
    ["kind", row.kind], ["method", row.method], ["model", row.model], ["key metric", key], ["base → tuned", delta],
    ["time", fmtSeconds(row.time_s)], ["peak memory", row.peak_memory_mb == null ? "-" : fmt(row.peak_memory_mb, 0) + " MB"],
    ["gates", row.gates_passed === null ? "-" : row.gates_passed ? "passed" : "FAILED"],
  ];
  const factTable = h("table", {}, h("tbody", {}, facts.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
  view.append(h("div", { class: "grid" }, h("div", { class: "card" }, factTable),
    h("div", { class: "card chart", id: "loss-chart" }), h("div", { class: "card chart", id: "metric-chart", hidden: true })));
  const rows = [];
  let pending = false;
  const redraw = () => { pending = false; drawCurves(view, rows); view.querySelector("#live").textContent = `${rows.length} metric rows`; };
  view.append(h("p", { class: "muted", id: "live" }, "reading metrics…"));
  cleanup.push(stream(`/ui/api/runs/${encodeURIComponent(name)}/events`, (event, data) => {
    if (event === "end") { status.textContent = data.status; status.className = "status-" + data.status; return; }
    rows.push(data);
    if (!pending) { pending = true; requestAnimationFrame(redraw); }
  }));
  const r = d.ratings;
  if (r.ratings) {
    const agree = r.agreement ? `; agreement on ${r.agreement.items} items: exact ${fmt(r.agreement.exact, 2)}, within one ${fmt(r.agreement.adjacent, 2)}` : "";
    view.append(h("h2", {}, "Human ratings"), h("p", { id: "ratings-summary" }, `mean ${fmt(r.mean, 2)} over ${r.ratings} ratings by ${r.raters} rater(s)${agree}`));
  }
  view.append(h("h2", {}, "Checkpoints"), h("ul", {}, d.checkpoints.map((c) => h("li", {}, h("code", {}, c.path)))));
  if (!d.checkpoints.length) view.append(h("p", { class: "muted" }, "none yet"));
  view.append(h("h2", {}, "Config"), h("pre", {}, d.config));
  view.append(h("h2", {}, "Data report"), h("pre", {}, JSON.stringify(d.data_report, null, 2)));
  if (d.has_report) {
    const html = await api(`/ui/api/runs/${encodeURIComponent(name)}/report`, { raw: true });
    view.append(h("h2", {}, "Report"), h("iframe", { title: "report", sandbox: "", srcdoc: html }));
  }
};

screens.compare = async function (view, picked) {
  const { runs } = await api("/ui/api/runs");
  const chosen = new Set((picked || "").split(",").filter(Boolean));
  const boxes = runs.map((r) => h("label", {}, h("input", { type: "checkbox", value: r.name, checked: chosen.has(r.name) }), " ", r.name, " "));
  view.append(h("h1", {}, "Compare"), h("div", { class: "filters" }, boxes, h("button", { onclick: () => { location.hash = "#/compare/" + boxes.map((b) => b.firstChild).filter((c) => c.checked).map((c) => c.value).join(","); } }, "Compare")));
  if (chosen.size < 2) { view.append(h("p", { class: "muted" }, "Pick two or more runs.")); return; }
  const c = await api("/ui/api/compare?" + [...chosen].map((n) => "runs=" + encodeURIComponent(n)).join("&"));
  const th = (cells) => h("tr", {}, cells.map((x) => h("th", {}, x)));
  view.append(h("table", {}, th(["", ...c.runs]), ["status", "method", "model", "time_s", "peak_memory_mb"].map((k) => h("tr", {}, h("th", {}, k), c.rows.map((r) => h("td", {}, k === "time_s" ? fmtSeconds(r[k]) : fmt(r[k], 0)))))));
  const keys = new Set();
  c.eval.forEach((e) => Object.entries(e).forEach(([split, v]) => Object.entries((v && v.tuned) || {}).forEach(([m, x]) => { if (typeof x === "number") keys.add(split + " " + m); })));
  const val = (e, key) => { const [split, m] = key.split(" "); return e[split] && e[split].tuned ? e[split].tuned[m] : undefined; };
  view.append(h("h2", {}, "Metrics (tuned)"), h("table", { id: "compare-metrics" }, th(["", ...c.runs]), [...keys].map((k) => h("tr", {}, h("th", {}, k), c.eval.map((e) => h("td", { class: "num" }, fmt(val(e, k))))))));
  const curves = h("div", { class: "grid" });
  view.append(h("h2", {}, "Curves"), curves);
  for (const key of ["train_loss", "val_loss"]) {
    const box = h("div", { class: "card chart" }); curves.append(box);
    lineChart(box, c.metrics.map((rows, i) => ({ name: c.runs[i], points: metricSeries(rows)[key] || [] })), { title: key });
  }
  const classes = [...new Set(c.per_class_f1.flatMap((m) => Object.keys(m)))];
  if (classes.length) view.append(h("h2", {}, "Per-class F1"), h("table", {}, th(["", ...c.runs]), classes.map((k) => h("tr", {}, h("th", {}, k), c.per_class_f1.map((m) => h("td", { class: "num" }, fmt(m[k])))))));
  if (c.forgetting.some(Boolean)) view.append(h("h2", {}, "Forgetting probes"), h("div", { class: "grid" }, c.forgetting.map((f, i) => h("div", { class: "card" }, h("b", {}, c.runs[i]), h("pre", {}, JSON.stringify(f, null, 1))))));
  view.append(h("h2", {}, "Config differences"), h("table", { id: "config-diff" }, th(["key", ...c.runs]), Object.entries(c.config_diff).map(([k, vs]) => h("tr", {}, h("th", {}, k), vs.map((v) => h("td", {}, JSON.stringify(v)))))));
};

async function ask(model, messages, sampling, task) {
  if (task === "classification") {
    const text = messages[messages.length - 1].content;
    const r = await api("/v1/classify", { method: "POST", body: { model, input: text } });
    return { probabilities: r.data[0].probabilities, label: r.data[0].label };
  }
  const r = await api("/v1/chat/completions", { method: "POST", body: Object.assign({ model, messages }, sampling) });
  return { text: r.choices[0].message.content };
}

function samplingControls() {
  const t = h("input", { name: "temperature", type: "number", step: "0.1", min: "0", max: "2", value: "0" });
  const p = h("input", { name: "top_p", type: "number", step: "0.05", min: "0", max: "1", value: "1" });
  const n = h("input", { name: "max_tokens", type: "number", min: "1", max: "1024", value: "64" });
  const read = () => ({ temperature: +t.value, top_p: +p.value, max_tokens: +n.value });
  return { el: h("span", {}, "temperature ", t, " top_p ", p, " max tokens ", n), read };
}

screens.playground = async function (view, first) {
  const { models } = await api("/ui/api/models");
  const boxes = models.map((m) => h("label", {}, h("input", { type: "checkbox", value: m.id, "data-task": m.task, checked: m.id === first }), " ", m.id, " "));
  const sampling = samplingControls();
  const input = h("textarea", { id: "prompt", placeholder: "Message (Ctrl+Enter sends)" });
  const columns = h("div", { class: "pair", id: "replies" });
  const history = {};
  const send = async () => {
    const picked = boxes.map((b) => b.firstChild).filter((c) => c.checked);
    if (!picked.length || !input.value.trim()) { showError("pick a model and type a message"); return; }
    const text = input.value; input.value = "";
    columns.style.gridTemplateColumns = `repeat(${picked.length}, 1fr)`;
    await Promise.all(picked.map(async (c) => {
      const id = c.value, task = c.dataset.task;
      let col = columns.querySelector(`[data-model="${CSS.escape(id)}"]`);
      if (!col) { col = h("div", { class: "card", "data-model": id }, h("b", {}, id)); columns.append(col); }
      const msgs = (history[id] = history[id] || []);
      msgs.push({ role: "user", content: text });
      col.append(h("p", { class: "muted" }, "you: " + text));
      const out = h("div", { class: "reply" }, "…"); col.append(out);
      const r = await ask(id, msgs, sampling.read(), task);
      if (r.probabilities) {
        msgs.pop();
        out.replaceChildren(h("b", {}, r.label), h("div", { class: "probs" }, Object.entries(r.probabilities).map(([k, v]) => h("div", {}, h("span", {}, k), h("b", { style: `width:${Math.round(v * 200)}px` }), fmt(v, 3)))));
      } else { msgs.push({ role: "assistant", content: r.text }); out.textContent = r.text; }
    }));
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) send(); });
  view.append(h("h1", {}, "Playground"), h("p", { class: "muted" }, "Pick one model, or several to compare them on the same message (a run and its @base: before and after)."),
    h("div", { class: "filters" }, boxes), h("div", { class: "filters" }, sampling.el), input, h("p", {}, h("button", { id: "send", onclick: send }, "Send")), columns);
};
