// The drift dashboard: a static page that reads data/index.json and data/deployments/<name>.json
// (written by the drift function) and draws them with plotly.min.js from the same folder.
// Routes: #/ (every deployment) and #/d/<name>[/<window id>] (one deployment, one window).
// Every value from JSON reaches the page through textContent or setAttribute, never innerHTML.
"use strict";
(function () {
  const VERDICTS = {
    drift: ["Drift", "▲"], no_drift: ["No drift", "✓"],
    not_enough_data: ["Not enough data", "…"], no_data: ["No data", "–"],
  };
  const P_VALUE_TESTS = { ks: "≤", chisquare: "<", z: "<" };  // drifted when p-value is below the threshold
  const DISTANCE_OP = { linf: ">", js_divergence: ">" };      // the other distances: drifted when >=
  const CHECKS = { missing_rate: "missing", out_of_range: "out of range", unseen: "unseen" };
  const COLORS = { reference: "#94a3b8", production: "#2563eb", outside: "#f59e0b", drift: "#dc2626" };
  const PRODUCTION_BARS = { color: "rgba(37, 99, 235, 0.3)", line: { color: COLORS.production, width: 1.5 } };
  const PLOT_CONFIG = { displayModeBar: false, responsive: true };
  const app = document.getElementById("app");

  // ---- small helpers -------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const num = (x) => (typeof x === "number" && isFinite(x) ? x : null);
  const int = (x) => (num(x) === null ? "–" : Math.round(x).toLocaleString("en-US"));
  function pct(x) {
    if (num(x) === null) return "–";
    const p = x * 100;
    return (p !== 0 && Math.abs(p) < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
  }
  function score(x) {
    if (num(x) === null) return "–";
    if (x !== 0 && Math.abs(x) < 0.001) return x.toExponential(1);
    return String(Number(x.toPrecision(3)));
  }
  function when(iso) {
    if (!iso) return "–";
    const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)/.exec(iso);
    return m ? `${m[1]} ${m[2]} UTC` : iso;
  }
  function verdict(status, big) {
    const [label, mark] = VERDICTS[status] || [String(status || "unknown"), "?"];
    const cls = VERDICTS[status] ? status : "unknown";
    return el("span", { class: `verdict v-${cls}${big ? " big" : ""}` }, el("span", { "aria-hidden": "true" }, mark), " ", label);
  }
  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = false;
  }
  async function getJSON(path) {
    let response;
    try {
      response = await fetch(path, { cache: "no-cache" });
    } catch (err) {
      throw new Error(`Could not load ${path}: ${err.message}`);
    }
    if (!response.ok) throw new Error(`Could not load ${path}: HTTP ${response.status}`);
    try {
      return await response.json();
    } catch (err) {
      throw new Error(`Could not read ${path}: not valid JSON`);
    }
  }
  // Plotly reads a few HTML tags and entities in labels; report text must show as typed.
  const plain = (x) => String(x).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const deploymentHref = (name, win) =>
    `#/d/${encodeURIComponent(name)}` + (win ? `/${encodeURIComponent(win)}` : "");

  // ---- home: every deployment ----------------------------------------------------------------
  function homePage(index) {
    const rows = index.deployments || [];
    document.getElementById("generated").textContent = `data written ${when(index.generated_at)}`;
    if (!rows.length) {
      return el("section", { class: "empty" }, el("h1", {}, "No deployments yet"),
        el("p", {}, "Deploy a model and let the drift function run once; its deployments appear here."));
    }
    const head = ["Deployment", "Status", "Revision", "Rows", "Drifted features", "Verdict", "Last refresh"];
    const body = rows.map((d) => {
      const drifted = d.drifted_features || [];
      const revision = d.serving_revision != null && d.serving_revision !== d.revision
        ? `${d.revision} (serving ${d.serving_revision})` : d.revision;
      return el("tr", { "data-deployment": d.name, class: d.status_drift === "drift" ? "row-drift" : null },
        el("td", {}, el("a", { href: deploymentHref(d.name) }, d.name)),
        el("td", {}, d.status ?? "–"),
        el("td", { class: "num" }, revision ?? "–"),
        el("td", { class: "num" }, int(d.rows), d.window ? el("span", { class: "muted" }, ` · ${d.window}`) : null),
        el("td", {}, pct(d.drifted_share), drifted.length ? el("span", { class: "muted" }, ` · ${drifted.join(", ")}`) : null),
        el("td", {}, verdict(d.status_drift)),
        el("td", {}, when(d.last_refresh)));
    });
    return el("section", {}, el("h1", {}, "Deployments"),
      el("table", { class: "grid", id: "deployments" },
        el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, body)));
  }

  // ---- one deployment ------------------------------------------------------------------------
  function severity(f) {
    const s = num(f.score), t = num(f.threshold);
    if (s === null || t === null) return -1;
    if (f.test in P_VALUE_TESTS) return s <= 0 ? Infinity : t / s;
    return t <= 0 ? s : s / t;
  }
  const bySeverity = (a, b) => (b.drifted - a.drifted) || (severity(b) - severity(a)) || String(a.name).localeCompare(b.name);
  function badge(f, judged) {
    if (!judged) return el("span", { class: "badge wait", title: "too few production rows to judge" }, "Not judged");
    return f.drifted ? el("span", { class: "badge drifted" }, "Drifted") : el("span", { class: "badge ok" }, "OK");
  }
  const op = (f) => P_VALUE_TESTS[f.test] || DISTANCE_OP[f.test] || "≥";

  function windowNav(doc, current) {
    return el("nav", { class: "windows", "aria-label": "Window" }, (doc.windows || []).map((w) => {
      const id = w.window && w.window.id;
      const label = id === "all" ? "All" : id === "last-24h" ? "Last 24 h" : id;
      return el("a", { href: deploymentHref(doc.deployment, id), class: `win v-${w.status}`, "data-window": id,
        "aria-current": id === current ? "page" : null, title: (VERDICTS[w.status] || [w.status])[0] },
        el("span", { class: "dot", "aria-hidden": "true" }), label);
    }));
  }

  function summary(r) {
    const features = r.features || [];
    const drifted = r.drifted_features || features.filter((f) => f.drifted).map((f) => f.name);
    const w = r.window || {};
    const facts = [
      ["Window", `${w.id || "–"} · ${when(w.start)} → ${when(w.end)}`],
      ["Rows", `${int(r.rows && r.rows.production)} production vs ${int(r.rows && r.rows.reference)} reference`],
      ["Method", r.method || "–"],
      ["Drifted features", `${drifted.length} of ${features.length} (${pct(r.drifted_share)}); dataset drift at ${pct(r.drift_share_threshold)}`],
    ];
    const parts = [el("div", { class: "summary-head" }, verdict(r.status, true),
      drifted.length ? el("span", { class: "drifted-list" }, "Drifted: ", drifted.join(", ")) : null),
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))];
    if (r.status === "not_enough_data" || r.enough_data === false) {
      parts.push(el("p", { class: "banner", id: "not-enough-data", role: "status" },
        el("strong", {}, "Not enough data. "),
        `${int(r.rows && r.rows.production)} production rows in this window; at least ${int(r.min_rows)} are needed. ` +
        "Scores are shown for information only: no feature is called drifted."));
    }
    if ((r.notes || []).length) parts.push(el("ul", { class: "notes" }, r.notes.map((n) => el("li", {}, n))));
    return el("section", { class: `summary s-${r.status}` }, parts);
  }

  function checksCell(f) {
    return Object.entries(f.checks || {}).map(([name, c]) => {
      const label = `${CHECKS[name] || name} ${pct(c && c.score)}`;
      return c && c.flagged
        ? el("span", { class: "chip flagged", title: `above ${pct(c.threshold)}`, "data-check": name }, "⚠ ", label)
        : el("span", { class: "chip", "data-check": name }, label);
    });
  }

  function columnsTable(list, id, judged) {
    const head = ["Name", "Verdict", "Score", "Test", "Missing (ref → prod)", "Checks"];
    const rows = list.map((f) => el("tr", { "data-feature": f.name, class: f.drifted ? "row-drift" : null },
      el("td", {}, el("a", { href: `#plot-${id}-${encodeURIComponent(f.name)}`, "data-jump": `plot-${id}-${encodeURIComponent(f.name)}` }, f.name),
        el("span", { class: "muted" }, ` ${f.type || ""}`)),
      el("td", {}, badge(f, judged)),
      el("td", { class: "num" }, el("strong", {}, score(f.score)), el("span", { class: "muted" }, ` ${op(f)} ${score(f.threshold)}`)),
      el("td", {}, f.test_title || f.test || "–"),
      el("td", { class: "num" }, `${pct(f.missing && f.missing.reference)} → ${pct(f.missing && f.missing.production)}`),
      el("td", {}, checksCell(f))));
    return el("table", { class: "grid", id: `${id}-table` },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
  }

  // Returns [traces, layout extras, caption] for one feature's training vs production distribution.
  function distribution(f) {
    const ref = (f.reference && f.reference.histogram) || {}, prod = (f.production && f.production.histogram) || {};
    const sum = (a) => (a || []).reduce((s, x) => s + (x || 0), 0);
    if (f.type === "numerical" && Array.isArray(ref.edges) && ref.edges.length > 1) {
      const e = ref.edges, width = e.slice(1).map((x, i) => x - e[i]), mid = width.map((w, i) => e[i] + w / 2);
      const step = width[0] || 1, below = prod.below || 0, above = prod.above || 0;
      const refTotal = sum(ref.counts) || 1, prodTotal = sum(prod.counts) + below + above || 1;
      const traces = [
        { type: "bar", name: "training", x: mid, y: (ref.counts || []).map((c) => c / refTotal), width, marker: { color: COLORS.reference } },
        { type: "bar", name: "production", x: mid, y: (prod.counts || []).map((c) => c / prodTotal), width,
          marker: PRODUCTION_BARS },
      ];
      const every = Math.ceil(e.length / 6), tickvals = e.filter((x, i) => i % every === 0 || i === e.length - 1);
      const ticktext = tickvals.map((x) => score(x)), range = [e[0], e[e.length - 1]];
      if (below || above) {
        const xs = [e[0] - step * 1.5, e[e.length - 1] + step * 1.5];
        traces.push({ type: "bar", name: "out of range", x: xs, y: [below / prodTotal, above / prodTotal],
          width: [step, step], marker: { color: COLORS.outside } });
        tickvals.unshift(xs[0]); ticktext.unshift("below"); tickvals.push(xs[1]); ticktext.push("above");
        range[0] = e[0] - step * 2.2; range[1] = e[e.length - 1] + step * 2.2;
      }
      return [traces, { barmode: "overlay", xaxis: { tickvals, ticktext, range, autorange: false } },
        `Production outside the training range: ${int(below)} below, ${int(above)} above (${pct((below + above) / prodTotal)}).`];
    }
    const cats = (prod.categories || []).slice();  // production lists reference's categories, then unseen ones
    for (const c of ref.categories || []) if (!cats.includes(c)) cats.push(c);
    const share = (h) => { const t = sum(h.counts) || 1; const m = new Map((h.categories || []).map((c, i) => [c, (h.counts[i] || 0) / t])); return cats.map((c) => m.get(c) || 0); };
    const unseen = cats.filter((c) => !(ref.categories || []).includes(c));
    return [[
      { type: "bar", name: "training", x: cats.map(plain), y: share(ref), marker: { color: COLORS.reference } },
      { type: "bar", name: "production", x: cats.map(plain), y: share(prod), marker: PRODUCTION_BARS },
    ], { barmode: "group", xaxis: { type: "category" } },
    unseen.length ? `Unseen in training: ${unseen.join(", ")}.` : "Every production category was seen in training."];
  }

  function plot(node, traces, extra) {
    if (typeof Plotly === "undefined") {
      node.append(el("p", { class: "muted" }, "Charts unavailable: plotly.min.js did not load."));
      return;
    }
    const layout = Object.assign({
      height: 240, margin: { l: 44, r: 12, t: 26, b: 28 }, font: { size: 11, family: "system-ui, sans-serif" },
      legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" }, bargap: 0.04, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
      yaxis: { tickformat: ".0%", gridcolor: "#eef0f3", rangemode: "tozero" },
    }, extra || {});
    Plotly.newPlot(node, traces, layout, PLOT_CONFIG);
  }

  function chartCards(list, id, judged) {
    return el("div", { class: "cards" }, list.map((f) => {
      const [traces, extra, caption] = distribution(f);
      const node = el("div", { class: "plot", "data-plot": f.name });
      const card = el("article", { class: `card${f.drifted ? " card-drift" : ""}`, id: `plot-${id}-${encodeURIComponent(f.name)}` },
        el("h3", {}, f.name, " ", badge(f, judged)),
        el("p", { class: "muted small subtitle" }, `${f.type || ""} · ${f.test_title || f.test || ""} ${score(f.score)} ${op(f)} ${score(f.threshold)}`),
        node, el("p", { class: "muted small caption" }, caption));
      requestAnimationFrame(() => plot(node, traces, extra));
      return card;
    }));
  }

  function columnsSection(title, list, id, judged) {
    if (!list.length) return el("section", { id }, el("h2", {}, title), el("p", { class: "muted" }, "None in this report."));
    const sorted = list.slice().sort(bySeverity);
    return el("section", { id }, el("h2", {}, title), columnsTable(sorted, id, judged), chartCards(sorted, id, judged));
  }

  function historySection(doc, report) {
    const history = doc.history || [];
    const section = el("section", { id: "history" }, el("h2", {}, "Drift over time"));
    if (!history.length) {
      section.append(el("p", { class: "muted" }, "No daily windows yet."));
      return section;
    }
    const days = history.map((h) => plain(h.id));
    const shareNode = el("div", { class: "plot", "data-plot": "drifted_share" });
    const scoreNode = el("div", { class: "plot", "data-plot": "scores" });
    section.append(el("div", { class: "cards two" },
      el("article", { class: "card" }, el("h3", {}, "Share of drifted features per day"), shareNode,
        el("p", { class: "muted small caption" }, "Points: red = dataset drift, blue = no drift, grey = not enough data that day.")),
      el("article", { class: "card" }, el("h3", {}, "Score per feature per day"), scoreNode,
        el("p", { class: "muted small caption" }, "Crosses mark days a feature drifted. p-value tests drift when low; distances when high."))));
    const threshold = num(report && report.drift_share_threshold);
    const marker = history.map((h) => (h.status === "drift" ? COLORS.drift : h.status === "no_drift" ? COLORS.production : COLORS.reference));
    const shareTraces = [{ type: "scatter", mode: "lines+markers", name: "drifted share", x: days, y: history.map((h) => h.drifted_share),
      marker: { color: marker, size: 9 }, line: { color: COLORS.production },
      text: history.map((h) => plain(`${(VERDICTS[h.status] || [h.status])[0]} · ${int(h.rows)} rows`)), hovertemplate: "%{x}: %{y:.0%} (%{text})<extra></extra>" }];
    if (threshold !== null) shareTraces.push({ type: "scatter", mode: "lines", name: "threshold", x: days,
      y: days.map(() => threshold), line: { color: COLORS.drift, dash: "dash", width: 1 } });
    const names = [...new Set(history.flatMap((h) => Object.keys(h.scores || {})))];
    const scoreTraces = names.map((n) => ({ type: "scatter", mode: "lines+markers", name: plain(n), x: days,
      y: history.map((h) => (h.scores || {})[n] ?? null),
      marker: { symbol: history.map((h) => ((h.drifted || {})[n] ? "x" : "circle")), size: history.map((h) => ((h.drifted || {})[n] ? 11 : 6)) } }));
    const axis = { xaxis: { type: "category" } };
    requestAnimationFrame(() => {
      plot(shareNode, shareTraces, Object.assign({ yaxis: { tickformat: ".0%", range: [0, 1.05], gridcolor: "#eef0f3" } }, axis));
      plot(scoreNode, scoreTraces, Object.assign({ yaxis: { gridcolor: "#eef0f3", rangemode: "tozero" } }, axis));
    });
    return section;
  }

  function deploymentPage(doc, windowId) {
    document.getElementById("generated").textContent = `data written ${when(doc.generated_at)}`;
    const windows = doc.windows || [];
    const title = el("div", { class: "title" }, el("h1", {}, doc.deployment),
      el("span", { class: "muted" }, `${doc.status || "–"} · revision ${doc.revision ?? "–"}`));
    const back = el("p", {}, el("a", { href: "#/" }, "← All deployments"));
    if (!windows.length) {
      return el("section", {}, back, title, el("div", { class: "summary s-no_data" }, verdict("no_data", true),
        el("p", {}, "No production rows have been analysed for this deployment yet.")));
    }
    const pick = windowId || (windows.some((w) => w.window.id === "last-24h") ? "last-24h" : windows[0].window.id);
    const report = windows.find((w) => w.window && w.window.id === pick);
    if (!report) throw new Error(`Window "${pick}" is not in data/deployments/${doc.deployment}.json`);
    const judged = report.status !== "not_enough_data" && report.enough_data !== false;
    return el("div", { class: "deployment" }, back, title, windowNav(doc, pick), summary(report),
      columnsSection("Features", report.features || [], "features", judged),
      columnsSection("Outputs", report.outputs || [], "outputs", judged),
      historySection(doc, report));
  }

  // ---- routing -------------------------------------------------------------------------------
  let rendering = 0;
  async function route() {
    const token = ++rendering;
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    document.getElementById("error").hidden = true;
    try {
      const page = parts[0] === "d" && parts[1]
        ? deploymentPage(await getJSON(`data/deployments/${encodeURIComponent(parts[1])}.json`), parts[2])
        : homePage(await getJSON("data/index.json"));
      if (token !== rendering) return;
      app.replaceChildren(page);
      document.title = parts[0] === "d" ? `${parts[1]} · drift · modelrun` : "drift · modelrun";
    } catch (err) {
      if (token !== rendering) return;
      app.replaceChildren();
      showError(err.message || String(err));
    }
  }
  app.addEventListener("click", (event) => {  // the links from a table row to its chart keep the route
    const link = event.target.closest("a[data-jump]");
    if (!link) return;
    event.preventDefault();
    const target = document.getElementById(link.getAttribute("data-jump"));
    if (target) target.scrollIntoView({ behavior: "smooth", block: "center" });
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("error", (e) => showError(`Page error: ${e.message}`));
  route();
})();
