/* The XT report page (services/html_report.py inlines this after Vega, Vega-Lite and vega-embed, from
   report_vendor/): the runs table, and Vega-Lite charts of the metric curves, mean ± std bands and
   parallel coordinates, from the JSON `xt report` embedded in the page. No network. Text from the
   runs only ever goes in through textContent, or to the charts as data. */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("xt-report-data").textContent);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];
  const TIME_BINS = 100;  // bands over more distinct x values than this are binned
  const RUN_FIELDS = ["name", "job", "workspace", "experiment", "status", "exit_code", "duration", "target",
                      "username", "node_id", "reason", "command", "created", "started", "ended"];
  const GROUPS = ["metrics", "hparams", "tags"];

  const runs = DATA.runs;
  const byName = new Map(runs.map(run => [run.name, run]));
  const colorOf = new Map(runs.map((run, i) => [run.name, PALETTE[i % PALETTE.length]]));
  const primary = DATA.primary;
  let shown = new Set(runs.map(run => run.name));  // the runs the filter keeps
  let sortState = {key: null, desc: false};

  // --- small helpers ---------------------------------------------------------------------------
  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(([key, value]) => {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    });
    (children || []).forEach(child => node.append(child));
    return node;
  }

  const isNum = value => typeof value === "number" && isFinite(value);
  const present = value => value !== null && value !== undefined;
  const natural = (a, b) => a.localeCompare(b, undefined, {numeric: true});

  function fmt(value) {
    if (!present(value)) return "";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      const size = Math.abs(value);
      return size >= 1e5 || size < 1e-3 ? value.toPrecision(4) : String(+value.toFixed(4));
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function when(seconds) {
    if (!isNum(seconds)) return "";
    const d = new Date(seconds * 1000), two = n => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
           `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }

  function kib(bytes) { return bytes < 1024 ? `${bytes} bytes` : `${(bytes / 1024).toFixed(1)} KB`; }

  // `hparams.lr`, `metrics.loss`, `tags.note` or a run field
  function lookup(run, key) {
    const dot = key.indexOf(".");
    if (dot > 0 && GROUPS.includes(key.slice(0, dot))) return (run[key.slice(0, dot)] || {})[key.slice(dot + 1)];
    return run[key];
  }

  // the label of a run in a legend: its name and its swept hparams
  function runLabel(run) {
    const parts = DATA.swept.map(name => `${name}=${fmt((run.hparams || {})[name])}`);
    return [run.name].concat(parts).join(" ");
  }

  function option(select, value, label) { select.append(el("option", {value: value, text: label || value})); }

  function control(label, id, values, initial, onChange) {
    const select = el("select", {id: id});
    values.forEach(value => option(select, value));
    if (values.includes(initial)) select.value = initial;
    select.addEventListener("change", onChange);
    return [el("label", {for: id, text: label}), select];
  }

  const chosen = id => document.getElementById(id).value;
  const xTitle = name => name === "time" ? "time (s since the run started)" : name;

  // a run's [x, y] points of a metric (points without that x are left out)
  function points(run, metric, xName) {
    const series = (run.curves || {})[metric];
    if (!series) return [];
    const xs = series[xName] || [], out = [];
    series.value.forEach((value, i) => { if (isNum(xs[i]) && isNum(value)) out.push([xs[i], value]); });
    return out;
  }

  const visibleRuns = () => runs.filter(run => shown.has(run.name));

  const nothingLogged = (metric, xName) => `no run shown logged ${metric || "a metric"} against ${xName}`;

  // --- the runs table --------------------------------------------------------------------------
  const COLUMNS = [{key: "name", label: "run"}, {key: "status", label: "status"},
                   {key: "exit_code", label: "exit"}, {key: "duration", label: "duration (s)"}]
    .concat(DATA.columns.hparams.map(name => ({key: `hparams.${name}`, label: name, kind: "hparam"})))
    .concat(DATA.columns.metrics.map(name => ({key: `metrics.${name}`, label: name, kind: "metric"})));

  function rank(value) { return !present(value) ? 0 : isNum(value) ? 1 : 2; }

  // missing values first, as in `xt list runs --sort`; then numbers; then text in natural order
  function compare(a, b) {
    const ra = rank(a), rb = rank(b);
    if (ra !== rb) return ra - rb;
    if (ra === 1) return a - b;
    if (ra === 2) return fmt(a).localeCompare(fmt(b), undefined, {numeric: true});
    return 0;
  }

  function buildTable() {
    const table = el("table", {id: "runs"}), head = el("tr");
    COLUMNS.forEach(column => {
      const th = el("th", {class: column.kind || "", title: column.key, "data-key": column.key, scope: "col"},
                    [column.label, el("span", {class: "arrow"})]);
      th.addEventListener("click", () => sortBy(column.key));
      head.append(th);
    });
    table.append(el("thead", {}, [head]), el("tbody"));
    return table;
  }

  function fillTable() {
    const order = runs.slice();
    if (sortState.key) {
      order.sort((a, b) => compare(lookup(a, sortState.key), lookup(b, sortState.key)));
      if (sortState.desc) order.reverse();
    }
    const body = document.querySelector("#runs tbody");
    body.replaceChildren(...order.map(run => {
      const tr = el("tr", {"data-run": run.name, class: run.name === primary.best ? "best" : ""});
      COLUMNS.forEach(column => {
        const value = lookup(run, column.key);
        let cell;
        if (column.key === "name") {
          const link = el("a", {href: `#run-${run.name}`, text: run.name});
          link.addEventListener("click", () => { document.getElementById(`run-${run.name}`).open = true; });
          cell = el("td", {}, [link]);
        } else if (column.key === "status") {
          cell = el("td", {}, [el("span", {class: `status ${run.status}`, text: run.status || "",
                                           title: run.reason || ""})]);
        } else {
          cell = el("td", {class: isNum(value) ? "number" : "", text: fmt(value)});
        }
        tr.append(cell);
      });
      tr.hidden = !shown.has(run.name);
      return tr;
    }));
    document.querySelectorAll("#runs th").forEach(th => {
      th.querySelector(".arrow").textContent = th.dataset.key === sortState.key ? (sortState.desc ? "▼" : "▲") : "";
    });
  }

  function sortBy(key) {
    sortState = {key: key, desc: sortState.key === key ? !sortState.desc : false};
    fillTable();
  }

  // --- the filter box: words (substrings) and `name<op>value` terms, as `xt list runs --filter` -------
  const TERM = /^([A-Za-z_][\w.\-]*)(==|!=|<>|<=|>=|=|<|>|:regex:|:exists:)(.*)$/;
  const SPECIAL = {"$true": true, "$false": false, "$none": null};

  function parseValue(text) {
    if (Object.prototype.hasOwnProperty.call(SPECIAL, text)) return SPECIAL[text];
    if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) return Number(text);
    const quoted = text.length >= 2 && (text[0] === "'" || text[0] === '"') && text[text.length - 1] === text[0];
    if (quoted) return text.slice(1, -1);
    return text;
  }

  const someRunHas = (group, name) => runs.some(run => present((run[group] || {})[name]));

  // a bare name is the run field, else the hparam, else the metric (XT's rule); null: no run has it
  function resolveColumn(prop, op) {
    const dot = prop.indexOf(".");
    if (dot > 0 && GROUPS.includes(prop.slice(0, dot))) {
      return op === "exists" || someRunHas(prop.slice(0, dot), prop.slice(dot + 1)) ? prop : null;
    }
    if (RUN_FIELDS.includes(prop)) return prop;
    if (someRunHas("hparams", prop)) return `hparams.${prop}`;
    if (someRunHas("metrics", prop) || op === "exists") return `metrics.${prop}`;
    return null;
  }

  function parseFilter(text) {
    const terms = [], errors = [];
    text.trim().split(/\s+/).filter(Boolean).forEach(word => {
      const match = TERM.exec(word);
      if (!match) { terms.push({word: word.toLowerCase()}); return; }
      const op = ({"=": "==", "<>": "!="}[match[2]] || match[2]).replace(/:/g, "");
      const key = resolveColumn(match[1], op);
      if (!key) { errors.push(`unknown column '${match[1]}'`); return; }
      if (match[3] === "") { errors.push(`${word}: missing a value after ${match[2]}`); return; }
      const value = parseValue(match[3]);
      if (op === "regex") {
        try {
          terms.push({key, op, value, re: new RegExp(String(value))});
        } catch (e) {
          errors.push(`${word}: bad regular expression`);
        }
      } else if (op === "exists" && typeof value !== "boolean") {
        errors.push(`${word}: :exists: takes $true or $false`);
      } else {
        terms.push({key, op, value});
      }
    });
    return {terms, errors};
  }

  function equal(a, b) {
    if (typeof a === "boolean" || typeof b === "boolean") return a === b;
    return (present(a) ? a : null) === b;
  }

  function holds(run, term) {
    if (term.word !== undefined) return searchText(run).includes(term.word);
    const value = lookup(run, term.key);
    switch (term.op) {
      case "exists": return present(value) === term.value;
      case "regex": return typeof value === "string" && term.re.test(value);
      case "==": return equal(value, term.value);
      case "!=": return !equal(value, term.value);
    }
    if (!present(value) || typeof value === "boolean") return false;
    if ((typeof value === "string") !== (typeof term.value === "string")) return false;
    const v = term.value;
    return {"<": value < v, "<=": value <= v, ">": value > v, ">=": value >= v}[term.op];
  }

  const searchTexts = new Map();
  function searchText(run) {
    if (!searchTexts.has(run.name)) {
      const parts = [run.name, run.job, run.status, run.reason, run.target, run.node_id, run.command]
        .concat(Object.entries(run.hparams || {}).map(([k, v]) => `${k}=${fmt(v)}`))
        .concat(Object.entries(run.tags || {}).map(([k, v]) => v ? `${k}=${v}` : k));
      searchTexts.set(run.name, parts.filter(present).join(" ").toLowerCase());
    }
    return searchTexts.get(run.name);
  }

  function applyFilter() {
    const {terms, errors} = parseFilter(document.getElementById("filter").value);
    shown = new Set(runs.filter(run => terms.every(term => holds(run, term))).map(run => run.name));
    const status = document.getElementById("filter-status");
    status.className = errors.length ? "error" : "";
    status.textContent = errors.length ? `${errors.join("; ")} (ignored)` : `${shown.size} of ${runs.length} runs`;
    document.querySelectorAll("#runs tbody tr").forEach(tr => { tr.hidden = !shown.has(tr.dataset.run); });
    document.querySelectorAll("details.run-detail").forEach(d => { d.hidden = !shown.has(d.dataset.run); });
    drawAllSoon();
  }


  // --- the charts: Vega-Lite specs that vega-embed draws as SVG --------------------------------------
  // ast: vega evaluates the specs' expressions with its interpreter, not `new Function`, so the page's
  // CSP needs no 'unsafe-eval'. No actions menu: its exports would open new windows.
  const EMBED_OPTIONS = {mode: "vega-lite", renderer: "svg", actions: false, ast: true};
  const WIDTH = 760, HEIGHT = 300;
  const LEGEND = {symbolLimit: 20, labelLimit: 320};  // more runs than that: "…N entries"
  const views = {curves: null, bands: null, parallel: null};  // the drawn Vega views, for tests and consoles
  const charts = {};

  // each chart is drawn again (spec and data) on every change of its controls or of the filter (once
  // its typing pauses); one drawing at a time per chart, and the one after it uses the latest choices
  function chart(name, spec) { charts[name] = {name, spec, busy: null, again: false, embedded: null}; }

  function redraw(name) {
    const entry = charts[name];
    entry.again = true;
    if (!entry.busy) {
      entry.busy = (async () => {
        try {
          while (entry.again) {
            entry.again = false;
            await drawOnce(entry);
          }
        } finally {
          entry.busy = null;
        }
      })();
    }
    return entry.busy;
  }

  async function drawOnce(entry) {
    if (entry.embedded) entry.embedded.finalize();  // its listeners and timers go with it
    entry.embedded = views[entry.name] = null;
    const holder = document.getElementById(entry.name);
    const {spec, empty, notes} = entry.spec();
    if (!spec) {
      holder.replaceChildren(el("p", {class: "empty", text: empty}));
      return;
    }
    const target = el("div", {class: "chart"});
    holder.replaceChildren(target, ...(notes || []));
    try {
      entry.embedded = await vegaEmbed(target, {width: WIDTH, height: HEIGHT, ...spec}, EMBED_OPTIONS);
      views[entry.name] = entry.embedded.view;
    } catch (error) {
      holder.replaceChildren(el("p", {class: "error", text: `this chart could not be drawn: ${error.message}`}));
      console.error(error);
    }
  }

  function drawAll() { Object.keys(charts).forEach(redraw); }
  const redrawing = name => () => redraw(name);  // a control's change handler

  // typing in the filter redraws the charts once the typing pauses (the table follows each key at once):
  // every key restarts the wait; `settled` resolves when the charts have been asked to draw
  const FILTER_PAUSE_MS = 150;
  const pendingFilter = {timer: null, settled: null, settle: null};

  function drawAllSoon() {
    clearTimeout(pendingFilter.timer);
    if (!pendingFilter.settled) pendingFilter.settled = new Promise(resolve => { pendingFilter.settle = resolve; });
    pendingFilter.timer = setTimeout(() => {
      const settle = pendingFilter.settle;
      Object.assign(pendingFilter, {timer: null, settled: null, settle: null});
      try {
        drawAll();
      } finally {
        settle();
      }
    }, FILTER_PAUSE_MS);
  }

  window.xtViews = views;
  // resolves with the views once every chart has drawn the latest choices (a filter still waiting for
  // the typing to pause included)
  window.xtDrawn = async () => {
    while (pendingFilter.settled) await pendingFilter.settled;
    await Promise.all(Object.values(charts).map(entry => entry.busy));
    return views;
  };

  // [lowest, highest]; not Math.min(...values), which runs out of stack on long curves of many runs
  const bounds = values => values.reduce(([lo, hi], v) => [Math.min(lo, v), Math.max(hi, v)], [Infinity, -Infinity]);

  // whole-number x values (steps, epochs) get whole-number ticks: at most one tick per unit
  function integerAxis(values) {
    if (!values.every(Number.isInteger)) return {};
    const [lo, hi] = bounds(values);
    return {format: "d", tickCount: Math.max(1, Math.min(8, hi - lo))};
  }

  // --- metric curves: one line per run ---------------------------------------------------------
  chart("curves", () => {
    const metric = chosen("curve-metric"), xName = chosen("curve-x");
    const drawn = [], rows = [];
    visibleRuns().forEach(run => {
      const pts = points(run, metric, xName);
      if (pts.length) drawn.push(run);
      pts.forEach(([x, value]) => rows.push({run: run.name, label: runLabel(run), x, value, lone: pts.length === 1}));
    });
    if (!rows.length) return {empty: nothingLogged(metric, xName)};
    const x = {field: "x", type: "quantitative", title: xTitle(xName), scale: {zero: false},
               axis: xName === "time" ? {} : integerAxis(rows.map(row => row.x))};
    // a run keeps its colour whatever the filter shows
    const color = {field: "label", type: "nominal", title: "run", legend: LEGEND,
                   scale: {domain: drawn.map(runLabel), range: drawn.map(run => colorOf.get(run.name))}};
    return {spec: {
      datasets: {points: rows}, data: {name: "points"},
      encoding: {x, y: {field: "value", type: "quantitative", title: metric, scale: {zero: false}}, color},
      layer: [
        {mark: {type: "line", strokeWidth: 1.6}, encoding: {detail: {field: "run"}, tooltip: {field: "label"}}},
      ].concat(rows.some(row => row.lone)  // a run with one point has no line to draw: a dot instead
        ? [{transform: [{filter: "datum.lone"}], mark: {type: "point", filled: true, size: 40}}] : []),
    }};
  });

  // --- mean ± std bands: one per value of an hparam --------------------------------------------
  function extent(values) {
    let [lo, hi] = bounds(values);
    if (lo === hi) { const pad = lo === 0 ? 1 : Math.abs(lo) * 0.05; lo -= pad; hi += pad; }
    return [lo, hi];
  }

  // per x, the mean and the sample std over the runs of each run's mean there; one run: std 0
  function bandStats(members, metric, xName, keyOf) {
    const byX = new Map();  // x -> each run's mean there
    members.forEach(run => {
      const local = new Map();
      points(run, metric, xName).forEach(([px, py]) => {
        const key = keyOf(px);
        if (!local.has(key)) local.set(key, []);
        local.get(key).push(py);
      });
      local.forEach((ys, key) => {
        if (!byX.has(key)) byX.set(key, []);
        byX.get(key).push(ys.reduce((s, v) => s + v, 0) / ys.length);
      });
    });
    return [...byX.entries()].sort((a, b) => a[0] - b[0]).map(([px, ys]) => {
      const mean = ys.reduce((s, v) => s + v, 0) / ys.length;
      const std = ys.length > 1 ? Math.sqrt(ys.reduce((s, v) => s + (v - mean) ** 2, 0) / (ys.length - 1)) : 0;
      return {x: px, mean, std, n: ys.length};
    });
  }

  chart("bands", () => {
    const hparam = chosen("band-group"), metric = chosen("band-metric"), xName = chosen("band-x");
    if (!hparam) return {empty: "no hparams to group the runs by"};
    const count = n => `${n} run${n === 1 ? "" : "s"}`;
    const groups = (DATA.groups[hparam] || []).map((group, i) => ({
      value: group.label, color: PALETTE[i % PALETTE.length],
      members: group.runs.filter(name => shown.has(name)).map(name => byName.get(name)),
    })).filter(group => group.members.some(run => points(run, metric, xName).length));
    if (!groups.length) return {empty: nothingLogged(metric, xName)};
    // every group on the same x values: exact ones, or bins when there are too many (times)
    const xs = groups.flatMap(g => g.members.flatMap(run => points(run, metric, xName).map(p => p[0])));
    let keyOf = px => px, binned = false;
    if (new Set(xs).size > TIME_BINS) {
      const [lo, hi] = extent(xs), width = (hi - lo) / TIME_BINS;
      keyOf = px => lo + (Math.min(TIME_BINS - 1, Math.floor((px - lo) / width)) + 0.5) * width;
      binned = true;
    }
    const rows = [];
    groups.forEach(group => {
      group.label = `${hparam}=${group.value} (${count(group.members.length)})`;
      bandStats(group.members, metric, xName, keyOf).forEach(s => rows.push(
        {group: group.value, label: group.label, runs: group.members.length, x: s.x, mean: s.mean, std: s.std,
         lower: s.mean - s.std, upper: s.mean + s.std, n: s.n}));
    });
    const integer = !binned && xName !== "time";
    const x = {field: "x", type: "quantitative", title: xTitle(xName), scale: {zero: false},
               axis: integer ? integerAxis(rows.map(row => row.x)) : {}};
    const yTitle = `${metric} (mean ± std)`;
    const color = {field: "label", type: "nominal", title: hparam, legend: {...LEGEND, symbolOpacity: 1},
                   scale: {domain: groups.map(g => g.label), range: groups.map(g => g.color)}};
    const tooltip = [{field: "label", title: hparam}, {field: "x", title: xName}, {field: "mean"}, {field: "std"},
                     {field: "n", title: "runs at x"}];
    return {
      spec: {
        datasets: {bands: rows}, data: {name: "bands"}, encoding: {x, color},
        layer: [
          {mark: {type: "area", opacity: 0.18}, encoding: {
            y: {field: "lower", type: "quantitative", title: yTitle, scale: {zero: false}}, y2: {field: "upper"}}},
          {mark: {type: "line", strokeWidth: 1.8, point: rows.length === groups.length}, encoding: {
            y: {field: "mean", type: "quantitative", title: yTitle}, tooltip}},
        ],
      },
      notes: binned ? [el("p", {class: "note", text: `x binned into ${TIME_BINS} intervals`})] : [],
    };
  });

  // --- parallel coordinates: the hparams, then the metric ----------------------------------------
  const MISSING = -0.12;  // where a run without a value meets an axis: below its lowest value

  // an axis per swept hparam and the metric; each run's value on it as a number: numbers as they
  // are, other values by their place among the values shown
  function parallelAxes(members, metric, maximize) {
    const names = DATA.swept.length ? DATA.swept : DATA.columns.hparams;
    const axes = names.map(name => ({key: `hparams.${name}`, title: name}))
      .concat([{key: `metrics.${metric}`, title: `${metric} (${maximize ? "higher" : "lower"} is better)`}]);
    axes.forEach((axis, i) => {
      axis.field = `a${i}`;  // names of our own: an hparam's may hold dots, which Vega-Lite reads as paths
      const values = members.map(run => lookup(run, axis.key)).filter(present);
      const numeric = values.length > 0 && values.every(isNum);
      const labels = numeric ? [] : [...new Set(values.map(fmt))].sort(natural);
      axis.position = value => !present(value) ? null : numeric ? value : labels.indexOf(fmt(value));
      const positions = values.map(axis.position);
      const [lo, hi] = bounds(positions);
      // the same normalisation as the chart's calculate transform, to put the labels where the lines meet
      const norm = p => hi > lo ? (p - lo) / (hi - lo) : 0.5;
      const marks = numeric ? [...new Set([lo, (lo + hi) / 2, hi])].map(p => [p, fmt(p)]) : labels.map((l, k) => [k, l]);
      axis.ticks = marks.map(([p, label]) => ({title: axis.title, norm: norm(p), label}));
      if (values.length < members.length) axis.ticks.push({title: axis.title, norm: MISSING, label: "missing"});
    });
    return axes;
  }

  chart("parallel", () => {
    const metric = chosen("parallel-metric");
    const members = visibleRuns();
    if (!(DATA.swept.length || DATA.columns.hparams.length) || !metric || !members.length) {
      return {empty: DATA.columns.hparams.length ? "no run shown" : "no hparams logged"};
    }
    const maximize = metric === primary.metric ? primary.maximize : false;
    const axes = parallelAxes(members, metric, maximize);
    const rows = members.map(run => {
      const row = {run: run.name, label: runLabel(run), score: lookup(run, `metrics.${metric}`)};
      axes.forEach(axis => { row[axis.field] = axis.position(lookup(run, axis.key)); });
      return row;
    });
    const x = {field: "title", type: "nominal", sort: axes.map(axis => axis.title),
               axis: {title: null, orient: "top", labelAngle: 0, labelFontWeight: "bold", labelFontSize: 12,
                      domain: false, ticks: false, labelLimit: 200}};
    const y = {field: "norm", type: "quantitative", axis: null, scale: {domain: [MISSING - 0.04, 1.04]}};
    // dark for the best runs, light for the worst, grey without a value
    const color = {condition: {test: "!isValid(datum.score)", value: "#b0b7bf"}, field: "score", type: "quantitative",
                   title: metric, scale: {scheme: "viridis", reverse: maximize}};
    return {spec: {
      config: {view: {stroke: null}},  // the axes are the frame
      datasets: {runs: rows, axes: axes.map(axis => ({axis: axis.field, title: axis.title})),
                 ticks: axes.flatMap(axis => axis.ticks)},
      layer: [
        {data: {name: "axes"}, mark: {type: "rule", color: "#57606a"}, encoding: {x}},
        {data: {name: "runs"},
         transform: [  // Vega-Lite's parallel-coordinates pattern: fold the axes, normalise each to [0, 1]
           {fold: axes.map(axis => axis.field), as: ["axis", "value"]},
           {joinaggregate: [{op: "min", field: "value", as: "min"}, {op: "max", field: "value", as: "max"}],
            groupby: ["axis"]},
           {calculate: "isValid(datum.value) ? (datum.max > datum.min ? (datum.value - datum.min) / " +
                       `(datum.max - datum.min) : 0.5) : ${MISSING}`, as: "norm"},
           {lookup: "axis", from: {data: {name: "axes"}, key: "axis", fields: ["title"]}}],
         mark: {type: "line", strokeWidth: 1.5, opacity: 0.8},
         encoding: {x, y, color, detail: {field: "run"},
                    tooltip: [{field: "label", title: "run"}, {field: "score", title: metric}]}},
        {data: {name: "ticks"}, mark: {type: "text", align: "right", dx: -5, fontSize: 11, color: "#424a53"},
         encoding: {x, y, text: {field: "label"}}},
      ],
    }};
  });

  // --- each run: status, reason, outputs, console tail -----------------------------------------
  function runDetail(run) {
    const fields = [["status", run.status], ["reason", run.reason], ["exit code", run.exit_code],
                    ["duration", isNum(run.duration) ? `${fmt(run.duration)} s` : ""], ["job", run.job],
                    ["experiment", run.experiment], ["target", run.target], ["node", run.node_id],
                    ["created", when(run.created)], ["started", when(run.started)], ["ended", when(run.ended)],
                    ["command", run.command],
                    ["hparams", Object.entries(run.hparams || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(", ")],
                    ["tags", Object.entries(run.tags || {}).map(([k, v]) => v ? `${k}=${v}` : k).join(", ")]];
    const list = el("dl");
    fields.filter(([, value]) => present(value) && value !== "").forEach(([name, value]) => {
      list.append(el("dt", {text: name}), el("dd", {text: String(value)}));
    });
    const outputs = run.outputs || [];
    list.append(el("dt", {text: "outputs"}), el("dd", {}, outputs.length
      ? [el("ul", {class: "outputs"}, outputs.map(name => el("li", {}, [el("code", {text: name})]))),
         el("span", {class: "note"}, ["fetch them with ", el("code", {text: `xt download ${run.name}`})])]
      : ["none captured"]));
    const console_ = run.console || {text: "", bytes: 0, truncated: false};
    const about = console_.bytes === 0 ? "console: empty"
      : console_.truncated ? `console: the last ${kib(new Blob([console_.text]).size)} of ${kib(console_.bytes)}`
      : `console: ${kib(console_.bytes)}`;
    const summary = el("summary", {text: `${run.name} · ${run.status}${run.reason ? ` · ${run.reason}` : ""}`});
    const detail = el("details", {class: "run-detail", id: `run-${run.name}`, "data-run": run.name},
                      [summary, list, el("p", {class: "note", text: about})]);
    if (console_.bytes) detail.append(el("pre", {class: "console", text: console_.text}));
    detail.open = run.status === "error";
    return detail;
  }

  // --- the page --------------------------------------------------------------------------------
  function header() {
    const better = primary.maximize ? "higher is better" : "lower is better";
    const bestValue = primary.best ? fmt(lookup(byName.get(primary.best), `metrics.${primary.metric}`)) : "";
    const best = primary.best ? `; best: ${primary.best} (${bestValue})` : "";
    const note = (text, kind) => el("p", {class: kind || "note", text: text});
    const notes = [
      note(`${runs.length} runs of ${DATA.selection || "the workspace"} in workspace ${DATA.workspace}, ` +
           `written ${when(DATA.generated)}.`, "summary"),
      note(`Primary metric: ${primary.metric} (${better}, from ${primary.source})${best}.`, "summary"),
    ];
    if (DATA.live.length) {
      const some = DATA.live.slice(0, 10).join(", ") + (DATA.live.length > 10 ? ", ..." : "");
      notes.push(note(`${DATA.live.length} runs had not ended when this was written (${some}): ` +
                      "their metrics are the latest logged.", "note warn"));
    }
    if (DATA.subsampled.length) {
      const most = DATA.subsampled.reduce((a, b) => (b.points > a.points ? b : a));
      notes.push(note(`${DATA.subsampled.length} histories have more than ${DATA.limits.max_points} points and ` +
                      `are subsampled evenly in the charts (the longest: ${most.run} ${most.metric}, ` +
                      `${most.points} points); the table shows the last values.`, "note warn"));
    }
    notes.push(note(`Console tails: at most the last ${kib(DATA.limits.console_bytes)} of each run's output.`));
    DATA.notes.forEach(text => notes.push(note(text)));
    return [el("h1", {text: DATA.title})].concat(notes);
  }

  function section(title, id, controls, body) {
    return el("section", {id: `${id}-section`}, [el("h2", {text: title}), el("div", {class: "controls"}, controls),
                                                  body || el("div", {id: id})]);
  }

  function build() {
    const metrics = DATA.curve_metrics, axes = DATA.x_axes;
    const firstMetric = metrics.includes(primary.metric) ? primary.metric : metrics[0];
    const grouping = DATA.swept.concat(DATA.columns.hparams.filter(name => !DATA.swept.includes(name)));
    const scored = DATA.columns.metrics.filter(name => runs.some(run => isNum((run.metrics || {})[name])));
    const filter = el("input", {id: "filter", type: "search", autocomplete: "off",
                                placeholder: "filter: words, or name<op>value like lr=0.1 loss<0.5 opt:regex:^ad"});
    filter.addEventListener("input", applyFilter);
    const main = document.getElementById("report");
    main.replaceChildren(...header(),
      section("Runs", "runs", [filter, el("span", {id: "filter-status", text: `${runs.length} of ${runs.length} runs`})],
              el("div", {class: "table-wrap"}, [buildTable()])),
      section("Metric curves", "curves", [...control("metric", "curve-metric", metrics, firstMetric, redrawing("curves")),
                                          ...control("x", "curve-x", axes, "step", redrawing("curves"))]),
      section("Mean ± std by hparam", "bands", [
        ...control("metric", "band-metric", metrics, firstMetric, redrawing("bands")),
        ...control("x", "band-x", axes, "step", redrawing("bands")),
        ...control("group by", "band-group", grouping, grouping[0], redrawing("bands"))]),
      section("Hparams vs a metric (parallel coordinates)", "parallel",
              control("metric", "parallel-metric", scored, scored.includes(primary.metric) ? primary.metric : scored[0],
                      redrawing("parallel"))),
      section("Each run: status, outputs, console tail", "details", [], el("div", {id: "details"}, runs.map(runDetail))));
    fillTable();
    drawAll();
  }

  build();
})();
