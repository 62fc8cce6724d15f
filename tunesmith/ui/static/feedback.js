/* Human feedback screens: pairwise judgements, rating a run's predictions, labelling rows; and the data screen. */
"use strict";

function shuffled(pair) { return Math.random() < 0.5 ? pair : [pair[1], pair[0]]; }

screens.pairwise = async function (view) {
  const { models } = await api("/ui/api/models");
  const gen = models.filter((m) => m.task !== "classification");
  const pick = (name) => h("select", { name }, gen.map((m) => h("option", { value: m.id }, m.id)));
  const a = pick("model_a"), b = pick("model_b");
  if (gen.length > 1) b.value = gen[1].id;
  const judge = h("input", { name: "judge", placeholder: "your name", value: localStorage.getItem("tunesmith-judge") || "" });
  const prompts = h("textarea", { name: "prompts", placeholder: "one prompt per line" });
  const sampling = samplingControls();
  const stage = h("div", { id: "judge-stage" });
  const progress = h("p", { id: "pair-progress", class: "muted" });
  const total = async () => { const p = await api("/ui/api/feedback/pairwise"); progress.textContent = `${p.judged} judged in all, ${p.pairs} preference pairs in ${p.file}`; };
  view.append(h("h1", {}, "Pairwise feedback"),
    h("p", { class: "muted" }, "Two responses to one prompt, in random order. Keys: ", h("kbd", {}, "1"), " A is better, ", h("kbd", {}, "2"), " B is better, ", h("kbd", {}, "3"), " tie, ", h("kbd", {}, "4"), " both bad. The same model twice compares two samples (set a temperature)."),
    h("div", { class: "filters" }, "A ", a, " B ", b, judge, sampling.el), prompts, h("p", {}, h("button", { id: "pair-start", onclick: start }, "Start")), progress, stage);
  await total();
  let onKey = null;
  cleanup.push(() => onKey && document.removeEventListener("keydown", onKey));
  async function start() {
    const list = prompts.value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!list.length || !judge.value.trim()) { showError("type at least one prompt and your name"); return; }
    localStorage.setItem("tunesmith-judge", judge.value.trim());
    let i = 0;
    const next = async () => {
      if (i >= list.length) { stage.replaceChildren(h("p", { id: "pair-done" }, `Done: ${list.length} judged.`)); await total(); return; }
      const prompt = list[i];
      stage.replaceChildren(h("p", { class: "muted" }, `generating ${i + 1} / ${list.length}…`));
      const msgs = [{ role: "user", content: prompt }];
      const answers = await Promise.all([a.value, b.value].map(async (m) => ({ model: m, text: (await ask(m, msgs, sampling.read())).text })));
      const [left, right] = shuffled(answers);
      const comment = h("input", { name: "comment", placeholder: "comment (optional)", size: 60 });
      const choose = async (choice) => {
        document.removeEventListener("keydown", onKey); onKey = null;
        await api("/ui/api/feedback/pairwise", { method: "POST", body: { prompt, a: left, b: right, choice, judge: judge.value.trim(), comment: comment.value } });
        i += 1; await total(); await next();
      };
      stage.replaceChildren(h("p", { id: "pair-count" }, `${i + 1} / ${list.length}`), h("div", { class: "card" }, h("b", {}, "Prompt: "), prompt),
        h("div", { class: "pair" }, h("div", { class: "card" }, h("b", {}, "A"), h("div", { class: "reply", id: "reply-a" }, left.text)), h("div", { class: "card" }, h("b", {}, "B"), h("div", { class: "reply", id: "reply-b" }, right.text))),
        h("div", { class: "filters" }, h("button", { onclick: () => choose("a") }, "1 · A"), h("button", { onclick: () => choose("b") }, "2 · B"), h("button", { onclick: () => choose("tie") }, "3 · tie"), h("button", { class: "secondary", onclick: () => choose("both_bad") }, "4 · both bad"), comment));
      onKey = (e) => {
        if (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA") return;
        const choice = { 1: "a", 2: "b", 3: "tie", 4: "both_bad" }[e.key];
        if (choice) { e.preventDefault(); choose(choice); }
      };
      document.addEventListener("keydown", onKey);
    };
    await next();
  }
};

screens.rate = async function (view, name) {
  const { rows } = await api(`/ui/api/runs/${encodeURIComponent(name)}/predictions`);
  const rater = h("input", { name: "rater", placeholder: "your name", value: localStorage.getItem("tunesmith-judge") || "" });
  const tags = h("input", { name: "tags", placeholder: "tags, comma separated (e.g. wrong-fact, too-long)", size: 50 });
  const stage = h("div"), summary = h("p", { id: "rating-summary", class: "muted" });
  view.append(h("h1", {}, `Rate ${name}`), h("p", { class: "muted" }, "Score each prediction 1 (bad) to 5 (good) with the keys 1-5."), h("div", { class: "filters" }, rater, tags), summary, stage);
  let i = 0;
  const show = () => {
    if (i >= rows.length) { stage.replaceChildren(h("p", {}, "All items rated.")); return; }
    const row = rows[i];
    stage.replaceChildren(h("p", {}, `item ${i + 1} / ${rows.length}`), row.input ? h("div", { class: "card" }, h("b", {}, "Input: "), row.input) : "",
      h("div", { class: "card reply" }, row.prediction), h("div", { class: "filters" }, [1, 2, 3, 4, 5].map((s) => h("button", { onclick: () => rate(s) }, String(s)))));
  };
  const rate = async (score) => {
    if (!rater.value.trim()) { showError("type your name first"); return; }
    const s = await api("/ui/api/feedback/ratings", { method: "POST", body: { run: name, item: i, rater: rater.value.trim(), score, tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean) } });
    summary.textContent = `mean ${fmt(s.mean, 2)} over ${s.ratings} ratings`; i += 1; show();
  };
  const onKey = (e) => { if (e.target.tagName !== "INPUT" && "12345".includes(e.key) && e.key) rate(+e.key); };
  document.addEventListener("keydown", onKey); cleanup.push(() => document.removeEventListener("keydown", onKey));
  show();
};

screens.label = async function (view) {
  const path = h("input", { name: "path", placeholder: "unlabelled JSONL (one {\"text\": ...} per line)", size: 60 });
  const labels = h("input", { name: "labels", placeholder: "labels, comma separated", size: 40 });
  const who = h("input", { name: "labeller", placeholder: "your name", value: localStorage.getItem("tunesmith-judge") || "" });
  const stage = h("div"), count = h("p", { class: "muted" });
  const exportBtn = h("button", { class: "secondary", onclick: async () => {
    const text = await api("/ui/api/feedback/labels", { raw: true });
    const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "application/jsonl" })), download: "labelled.jsonl" }); link.click();
  } }, "Export labelled JSONL");
  view.append(h("h1", {}, "Label rows"), h("div", { class: "filters" }, path, labels, who, h("button", { onclick: load }, "Load"), exportBtn), count, stage);
  async function load() {
    const { rows } = await api("/ui/api/data/rows?path=" + encodeURIComponent(path.value));
    const names = labels.value.split(",").map((s) => s.trim()).filter(Boolean);
    let i = 0;
    const show = () => {
      if (i >= rows.length) { stage.replaceChildren(h("p", {}, "All rows labelled.")); return; }
      const text = rows[i].text || JSON.stringify(rows[i]);
      stage.replaceChildren(h("p", {}, `row ${i + 1} / ${rows.length}`), h("div", { class: "card reply" }, text),
        h("div", { class: "filters" }, names.map((n) => h("button", { onclick: async () => {
          const r = await api("/ui/api/feedback/labels", { method: "POST", body: { text, label: n, labeller: who.value.trim() || "anonymous", source: path.value } });
          count.textContent = `${r.labelled} labelled`; i += 1; show();
        } }, n))));
    };
    show();
  }
};

screens.data = async function (view) {
  const path = h("input", { name: "path", placeholder: "data file (JSONL, CSV, ...) under the working directory", size: 60 });
  const { runs } = await api("/ui/api/runs");
  const run = h("select", { name: "run" }, h("option", { value: "" }, "tokenizer: default model"), runs.map((r) => h("option", { value: r.name }, "tokenizer of " + r.name)));
  const frame = h("iframe", { title: "data inspect", sandbox: "" });
  const go = async () => {
    const q = "path=" + encodeURIComponent(path.value) + (run.value ? "&run=" + encodeURIComponent(run.value) : "");
    frame.srcdoc = await api("/ui/api/data/inspect?" + q, { raw: true });
  };
  view.append(h("h1", {}, "Data"), h("p", { class: "muted" }, "What `tunesmith data inspect` finds: bad rows with file:line, lengths, labels, and a rendered example with its loss mask."),
    h("div", { class: "filters" }, path, run, h("button", { onclick: go }, "Inspect")), frame);
};
