// perception-rl view: renders the data embedded in the page (#view-data); no network, works from file://.
// Which response / group / item passes a filter is decided in Python (the `flags` lists); this only shows them.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("view-data").textContent);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const fmt = (v, digits = 3) => (v === null || v === undefined ? "abstained" : Number(v).toFixed(digits));
  const signed = (v) => (v > 0 ? "+" : "") + Number(v).toFixed(2);

  function image(key, cls) {
    return el("img", { class: cls, src: data.images[key], alt: "prompt image" });
  }

  function verdictList(annotations, verdicts) {
    if (!annotations.length) return null;
    return el("ul", { class: "verdicts" }, annotations.map((text, k) => {
      const verdict = verdicts ? verdicts[k] || "missing" : null;
      const mark = { correct: "\u2713", wrong: "\u2717" }[verdict] || (verdict ? "?" : "\u2022");
      return el("li", { class: verdict ? "verdict " + verdict : "", "data-verdict": verdict, title: verdict || "" },
        `${mark} ${text}`);
    }));
  }

  function filterBox(id, label, count) {
    return el("label", {}, el("input", { type: "checkbox", class: "filter", "data-filter": id }), ` ${label} `,
      el("span", { class: "count", "data-count": id, text: count === undefined ? "" : `(${count})` }));
  }

  // ----------------------------------------------------------------------------------------- tabs
  const nav = document.getElementById("tabs");
  const main = document.getElementById("main");
  const panels = [];
  function addPanel(id, label, build) {
    const panel = el("section", { class: "panel", id });
    const button = el("button", { "data-tab": id, text: label });
    button.addEventListener("click", () => show(id));
    nav.append(button);
    main.append(panel);
    panels.push({ id, panel, button });
    build(panel);
  }
  function show(id) {
    for (const p of panels) {
      p.panel.classList.toggle("active", p.id === id);
      p.button.classList.toggle("active", p.id === id);
    }
  }

  // ----------------------------------------------------------------------------------------- training
  function buildTraining(panel) {
    const filters = { ...data.filters.response, ...data.filters.group };
    const active = new Set();
    let index = data.steps.length - 1;

    const curves = el("div", { class: "curves", id: "curves" });
    curves.innerHTML = data.curves_svg;
    const picker = el("select", { id: "step-picker", title: "step (\u2190 \u2192)" },
      data.steps.map((s, i) => el("option", { value: String(s.step), "data-index": i, text: `step ${s.step}` })));
    const prev = el("button", { id: "step-prev", text: "\u2190" });
    const next = el("button", { id: "step-next", text: "\u2192" });
    const boxes = el("span", { id: "training-filters" },
      Object.entries(filters).map(([id, label]) => filterBox(id, label)));
    const summary = el("span", { class: "summary", id: "training-summary" });
    const legend = el("span", { class: "legend" }, el("span", { class: "verdict correct", text: "correct" }),
      el("span", { class: "verdict wrong", text: "wrong" }), el("span", { class: "verdict failed", text: "failed / unparsable" }));
    const groups = el("div", { id: "groups" });
    panel.append(curves, el("div", { class: "controls" }, el("span", {}, prev, " ", picker, " ", next), boxes, legend, summary), groups);

    picker.addEventListener("change", () => { index = picker.selectedIndex; render(); });
    prev.addEventListener("click", () => { index = Math.max(0, index - 1); render(); });
    next.addEventListener("click", () => { index = Math.min(data.steps.length - 1, index + 1); render(); });
    boxes.addEventListener("change", (event) => {
      const id = event.target.dataset.filter;
      if (event.target.checked) active.add(id); else active.delete(id);
      render();
    });
    document.addEventListener("keydown", (event) => {
      if (!panel.classList.contains("active") || event.target.tagName === "SELECT") return;
      if (event.key === "ArrowLeft") prev.click();
      if (event.key === "ArrowRight") next.click();
    });

    function matches(step) {
      const responseFilters = [...active].filter((f) => f in data.filters.response);
      const groupFilters = [...active].filter((f) => f in data.filters.group);
      const shown = [];
      for (const group of step.groups) {
        if (!groupFilters.every((f) => group.flags.includes(f))) continue;
        const hits = group.responses.filter((r) => responseFilters.every((f) => r.flags.includes(f)));
        if (hits.length) shown.push({ group, hits: new Set(hits.map((r) => r.sample)) });
      }
      return shown;
    }

    function render() {
      const step = data.steps[index];
      picker.selectedIndex = index;
      for (const [i, option] of [...picker.options].entries()) {
        const shown = matches(data.steps[i]);
        option.textContent = `step ${data.steps[i].step}` + (active.size ? ` (${shown.length} groups)` : "");
      }
      for (const id of Object.keys(filters)) {
        const flagged = id in data.filters.group
          ? step.groups.filter((g) => g.flags.includes(id)).length
          : step.groups.reduce((n, g) => n + g.responses.filter((r) => r.flags.includes(id)).length, 0);
        panel.querySelector(`[data-count="${id}"]`).textContent = `(${flagged})`;
      }
      const shown = matches(step);
      const responses = shown.reduce((n, s) => n + s.hits.size, 0);
      summary.textContent = `step ${step.step}: ${shown.length} of ${step.groups.length} groups, ${responses} responses`;
      groups.replaceChildren(...(shown.length ? shown.map((s) => groupCard(step, s.group, s.hits))
        : [el("div", { class: "empty", text: "No group of this step passes the filters." })]));
      for (const svg of document.querySelectorAll("svg.curve")) {
        const d = svg.dataset, span = Math.max(Number(d.s1) - Number(d.s0), 1);
        const x = Number(d.x0) + (step.step - Number(d.s0)) / span * (Number(d.x1) - Number(d.x0));
        const marker = svg.querySelector(".step-marker");
        marker.setAttribute("x1", x); marker.setAttribute("x2", x);
      }
    }

    function groupCard(step, group, hits) {
      const dimming = [...active].some((f) => f in data.filters.response);
      const prompt = el("div", { class: "prompt" }, group.images.map((k) => image(k, "prompt-image")),
        el("div", { class: "rid", text: group.record_id }), el("div", { class: "problem", text: group.problem }),
        el("div", {}, "gold: ", el("span", { class: "gold", text: group.answer })),
        group.annotations.length ? el("div", { class: "facts-title", text: "annotations:" }) : null,
        group.annotations.length ? el("ol", { class: "facts" }, group.annotations.map((a) => el("li", { text: a }))) : null);
      const cards = group.responses.map((r) => responseCard(step, group, r, dimming && !hits.has(r.sample)));
      return el("div", { class: "group" + (group.flags.includes("zero_advantage") ? " zero-advantage" : ""),
        "data-group": group.group, "data-record-id": group.record_id }, prompt, el("div", { class: "responses" }, cards));
    }

    function responseCard(step, group, r, dimmed) {
      const advClass = r.advantage > 0 ? "pos" : r.advantage < 0 ? "neg" : "zero";
      const chips = step.rewards.map((w) => el("span", { class: "chip", title: w.weight === null ? "" : `weight ${w.weight}` },
        `${w.name} ${fmt(r.rewards[w.name], 2)}`));
      const badges = [];
      if (r.truncated) badges.push(el("span", { class: "badge warn", text: "truncated" }));
      if (r.flags.includes("judge_failed")) badges.push(el("span", { class: "badge bad", text: "judge failed" }));
      if (r.flags.includes("right_answer_wrong_perception")) badges.push(el("span", { class: "badge warn", text: "right answer, wrong perception" }));
      const judged = Object.entries(r.judges).map(([name, j]) => el("div", { class: "judge", "data-judge": name },
        verdictList(group.annotations, j.items),
        j.failure ? el("div", { class: "judged", text: `${name}: ${j.failure}${j.error ? " \u2014 " + j.error : ""}` }) : null,
        j.judged_response ? el("details", { class: "judged" }, el("summary", { text: "the judge read (neutralised)" }),
          el("pre", { text: j.judged_response })) : null,
        j.reply ? el("details", {}, el("summary", { text: `${name} judge reply` + (j.cached ? " (cached)" : "") }),
          el("pre", { text: j.reply })) : null));
      return el("div", { class: "response" + (dimmed ? " dimmed" : ""), "data-sample": r.sample },
        el("div", { class: "response-head" }, el("span", { text: `#${r.sample}` }),
          el("span", { text: `total ${fmt(r.total, 2)}` }), el("span", { class: "adv " + advClass, text: `adv ${signed(r.advantage)}` })),
        el("div", { class: "chips" }, chips), badges.length ? el("div", {}, badges) : null,
        el("pre", { class: "completion", text: r.completion }), judged);
    }

    render();
  }

  // ----------------------------------------------------------------------------------------- test results
  function buildEvaluation(panel, evaluation) {
    const active = new Set();
    const s = evaluation.summary || {};
    const pct = (v) => (v === null || v === undefined ? "n/a" : (100 * v).toFixed(1) + " %");
    const stats = el("div", { class: "stats" },
      el("span", {}, "items ", el("b", { text: evaluation.items.length })),
      el("span", {}, "accuracy ", el("b", { text: pct(s.accuracy) })),
      el("span", {}, "perception ", el("b", { text: pct(s.perception) })),
      el("span", {}, "format ", el("b", { text: pct(s.format_rate) })),
      s.right_and_scored ? el("span", {}, "right answers with wrong perception ",
        el("b", { text: `${s.right_answer_wrong_perception}/${s.right_and_scored}` })) : null,
      el("span", { class: "run", text: evaluation.folder }));
    const boxes = el("span", { class: "item-filters" }, Object.entries(data.filters.item).map(([id, label]) =>
      filterBox(id, label, evaluation.items.filter((i) => i.flags.includes(id)).length)));
    const summary = el("span", { class: "summary" });
    const list = el("div", { class: "items" });
    panel.append(stats, el("div", { class: "controls" }, boxes, summary), list);
    boxes.addEventListener("change", (event) => {
      const id = event.target.dataset.filter;
      if (event.target.checked) active.add(id); else active.delete(id);
      render();
    });

    function render() {
      const shown = evaluation.items.filter((item) => [...active].every((f) => item.flags.includes(f)));
      summary.textContent = `${shown.length} of ${evaluation.items.length} items`;
      list.replaceChildren(...(shown.length ? shown.map(itemCard) : [el("div", { class: "empty", text: "No item passes the filters." })]));
    }

    function itemCard(item) {
      const perception = item.perception_correct === null || item.perception_correct === undefined
        ? el("span", { class: "badge", text: "perception n/a" })
        : el("span", { class: "badge " + (item.perception_correct ? "good" : "bad"), text: `perception ${fmt(item.perception, 2)}` });
      return el("div", { class: "item " + (item.correct ? "correct" : "wrong"), "data-id": item.id },
        item.images.map((k) => image(k, "item-image")),
        el("div", { class: "rid", text: item.id }), el("div", { class: "problem", text: item.problem }),
        el("div", {}, el("span", { class: "badge " + (item.correct ? "good" : "bad"), text: item.correct ? "correct" : "wrong" }), perception,
          item.truncated ? el("span", { class: "badge warn", text: "truncated" }) : null,
          item.judge_failure ? el("span", { class: "badge bad", text: "judge failed: " + item.judge_failure } ) : null),
        el("div", {}, "gold: ", el("span", { class: "gold", text: item.gold }), "  answered: ", el("b", { text: item.extracted ?? "\u2014" })),
        el("pre", { class: "completion", text: item.response }),
        verdictList(item.annotations, item.items),
        item.judge_reply ? el("details", {}, el("summary", { text: "judge reply" }), el("pre", { text: item.judge_reply })) : null);
    }

    render();
  }

  if (data.steps.length) addPanel("training", "Training rollouts", buildTraining);
  data.evaluations.forEach((evaluation, i) =>
    addPanel(`test-${i}`, `Test: ${evaluation.name}`, (panel) => buildEvaluation(panel, evaluation)));
  show(panels[0].id);
  document.body.dataset.ready = "true";
})();
