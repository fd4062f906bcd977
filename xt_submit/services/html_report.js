/* The XT report page (services/html_report.py inlines this): the runs table, metric curves, mean ± std
   bands and parallel coordinates, drawn as SVG from the JSON `xt report` embedded in the page.
   No library and no network. Text from the runs only ever goes in through textContent. */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("xt-report-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];
  const LEGEND_MAX = 20;  // entries a legend lists before "+N more"
  const TIME_BINS = 100;  // bands over more distinct x values than this are binned
  const RUN_FIELDS = ["name", "job", "workspace", "experiment", "status", "exit_code", "duration", "target",
                      "username", "node_id", "reason", "command", "created", "started", "ended"];
  const GROUPS = ["metrics", "hparams", "tags"];
  const W = 800, H = 380, M = {left: 70, right: 20, top: 14, bottom: 46};

  const runs = DATA.runs;
  const byName = new Map(runs.map((run, i) => [run.name, run]));
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

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.entries(attrs || {}).forEach(([key, value]) => node.setAttribute(key, value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const isNum = value => typeof value === "number" && isFinite(value);
  const present = value => value !== null && value !== undefined;

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

  function legend(entries) {
    const list = el("ul", {class: "legend"});
    entries.slice(0, LEGEND_MAX).forEach(([color, label]) => {
      list.append(el("li", {}, [el("span", {class: "swatch", style: `background:${color}`}), label]));
    });
    if (entries.length > LEGEND_MAX) list.append(el("li", {class: "note", text: `+${entries.length - LEGEND_MAX} more`}));
    return list;
  }

  // --- scales and axes -------------------------------------------------------------------------
  function extent(values) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (lo === hi) { const pad = lo === 0 ? 1 : Math.abs(lo) * 0.05; lo -= pad; hi += pad; }
    return [lo, hi];
  }

  function ticks(lo, hi, count, integer) {
    const raw = (hi - lo) / count, magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 5, 10].map(m => m * magnitude).find(s => s >= raw);
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  function linear([d0, d1], [r0, r1]) { return v => r0 + (v - d0) / (d1 - d0) * (r1 - r0); }

  // an empty chart with axes for these x and y values; returns {svg, x, y}
  function frame(xs, ys, xTitle, yTitle, integerX) {
    const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img"});
    const xDomain = extent(xs), yDomain = extent(ys);
    const x = linear(xDomain, [M.left, W - M.right]), y = linear(yDomain, [H - M.bottom, M.top]);
    const grid = svgEl("g", {class: "grid"}), axes = svgEl("g", {class: "axis"});
    ticks(...xDomain, 8, integerX).forEach(t => {
      grid.append(svgEl("line", {x1: x(t), x2: x(t), y1: M.top, y2: H - M.bottom}));
      axes.append(svgEl("text", {x: x(t), y: H - M.bottom + 16, "text-anchor": "middle"}, fmt(t)));
    });
    ticks(...yDomain, 6, false).forEach(t => {
      grid.append(svgEl("line", {x1: M.left, x2: W - M.right, y1: y(t), y2: y(t)}));
      axes.append(svgEl("text", {x: M.left - 6, y: y(t) + 4, "text-anchor": "end"}, fmt(t)));
    });
    axes.append(svgEl("path", {d: `M${M.left},${M.top} V${H - M.bottom} H${W - M.right}`, fill: "none"}));
    axes.append(svgEl("text", {class: "axis-title", x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle"},
                      xTitle));
    axes.append(svgEl("text", {class: "axis-title", transform: `translate(14,${(M.top + H - M.bottom) / 2}) rotate(-90)`,
                               "text-anchor": "middle"}, yTitle));
    svg.append(grid, axes);
    return {svg, x, y};
  }

  const xTitle = name => name === "time" ? "time (s since the run started)" : name;

  // a run's [x, y] points of a metric (points without that x are left out)
  function points(run, metric, xName) {
    const series = (run.curves || {})[metric];
    if (!series) return [];
    const xs = series[xName] || [], out = [];
    series.value.forEach((value, i) => { if (isNum(xs[i]) && isNum(value)) out.push([xs[i], value]); });
    return out;
  }

  function pathOf(pts, f) {
    return pts.map(([px, py], i) => `${i ? "L" : "M"}${f.x(px).toFixed(1)},${f.y(py).toFixed(1)}`).join(" ");
  }

  const visibleRuns = () => runs.filter(run => shown.has(run.name));

  function nothingLogged(metric, xName) {
    return el("p", {class: "empty", text: `no run shown logged ${metric || "a metric"} against ${xName}`});
  }

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
    drawAll();
  }

  // --- metric curves: one line per run ---------------------------------------------------------
  function drawCurves() {
    const metric = document.getElementById("curve-metric").value, xName = document.getElementById("curve-x").value;
    const holder = document.getElementById("curves");
    const series = visibleRuns().map(run => ({run, pts: points(run, metric, xName)})).filter(s => s.pts.length);
    if (!series.length) {
      holder.replaceChildren(nothingLogged(metric, xName));
      return;
    }
    const all = [].concat(...series.map(s => s.pts));
    const integerX = all.every(([px]) => Number.isInteger(px)) && xName !== "time";
    const f = frame(all.map(p => p[0]), all.map(p => p[1]), xTitle(xName), metric, integerX);
    series.forEach(({run, pts}) => {
      // a lone point is drawn as a dot (a zero-length segment with a round cap)
      const d = pts.length === 1 ? `${pathOf(pts, f)} l0,0` : pathOf(pts, f);
      const path = svgEl("path", {class: "curve", d: d, stroke: colorOf.get(run.name), "data-run": run.name,
                                  "data-points": pts.length});
      path.append(svgEl("title", {}, `${runLabel(run)}: ${pts.length} points`));
      f.svg.append(path);
    });
    holder.replaceChildren(f.svg, legend(series.map(({run}) => [colorOf.get(run.name), runLabel(run)])));
  }

  // --- mean ± std bands: one per value of an hparam --------------------------------------------
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

  function drawBands() {
    const holder = document.getElementById("bands");
    const hparam = document.getElementById("band-group").value;
    const metric = document.getElementById("band-metric").value, xName = document.getElementById("band-x").value;
    if (!hparam) { holder.replaceChildren(el("p", {class: "empty", text: "no hparams to group the runs by"})); return; }
    const groups = (DATA.groups[hparam] || []).map((group, i) => ({
      label: group.label, color: PALETTE[i % PALETTE.length],
      members: group.runs.filter(name => shown.has(name)).map(name => byName.get(name)),
    })).filter(group => group.members.some(run => points(run, metric, xName).length));
    if (!groups.length) {
      holder.replaceChildren(nothingLogged(metric, xName));
      return;
    }
    // every group on the same x values: exact ones, or bins when there are too many (times)
    const xs = [].concat(...groups.map(g => [].concat(...g.members.map(run => points(run, metric, xName).map(p => p[0])))));
    let keyOf = px => px, binned = false;
    if (new Set(xs).size > TIME_BINS) {
      const [lo, hi] = extent(xs), width = (hi - lo) / TIME_BINS;
      keyOf = px => lo + (Math.min(TIME_BINS - 1, Math.floor((px - lo) / width)) + 0.5) * width;
      binned = true;
    }
    groups.forEach(group => { group.stats = bandStats(group.members, metric, xName, keyOf); });
    const stats = [].concat(...groups.map(g => g.stats));
    const integerX = !binned && xName !== "time" && stats.every(s => Number.isInteger(s.x));
    const f = frame(stats.map(s => s.x), stats.map(s => s.mean - s.std).concat(stats.map(s => s.mean + s.std)),
                    xTitle(xName), `${metric} (mean ± std)`, integerX);
    groups.forEach(group => {
      const upper = group.stats.map(s => [s.x, s.mean + s.std]), lower = group.stats.map(s => [s.x, s.mean - s.std]);
      const outline = `${pathOf(upper, f)} ${pathOf(lower.reverse(), f).replace(/^M/, "L")} Z`;
      const runsIn = group.members.length;
      const band = svgEl("path", {class: "band", d: outline, fill: group.color, "data-group": group.label,
                                  "data-runs": runsIn});
      band.append(svgEl("title", {}, `${hparam}=${group.label}: ${runsIn} runs`));
      const mean = group.stats.map(s => [s.x, s.mean]);
      const line = svgEl("path", {class: "band-mean", d: mean.length === 1 ? `${pathOf(mean, f)} l0,0` : pathOf(mean, f),
                                  stroke: group.color, "data-group": group.label});
      f.svg.append(band, line);
    });
    const count = n => `${n} run${n === 1 ? "" : "s"}`;
    const entries = groups.map(g => [g.color, `${hparam}=${g.label} (${count(g.members.length)})`]);
    const note = binned ? [el("p", {class: "note", text: `x binned into ${TIME_BINS} intervals`})] : [];
    holder.replaceChildren(f.svg, legend(entries), ...note);
  }

  // --- parallel coordinates: the hparams, then the metric ----------------------------------------
  function axisOf(key, title) {
    const values = visibleRuns().map(run => lookup(run, key)).filter(present);
    const numeric = values.length > 0 && values.every(isNum);
    const top = M.top + 16, bottom = H - M.bottom, missing = bottom + 22;
    if (numeric) {
      const domain = extent(values), y = linear(domain, [bottom, top]);
      return {key, title, pos: v => isNum(v) ? y(v) : missing,
              ticks: ticks(...domain, 5, values.every(Number.isInteger)).map(t => [y(t), fmt(t)])};
    }
    const labels = [...new Set(values.map(fmt))].sort((a, b) => a.localeCompare(b, undefined, {numeric: true}));
    const step = labels.length > 1 ? (bottom - top) / (labels.length - 1) : 0;
    const place = label => labels.length > 1 ? bottom - labels.indexOf(label) * step : (top + bottom) / 2;
    return {key, title, pos: v => present(v) ? place(fmt(v)) : missing, ticks: labels.map(l => [place(l), l])};
  }

  function drawParallel() {
    const holder = document.getElementById("parallel");
    const metric = document.getElementById("parallel-metric").value;
    const names = DATA.swept.length ? DATA.swept : DATA.columns.hparams;
    const members = visibleRuns();
    if (!names.length || !metric || !members.length) {
      holder.replaceChildren(el("p", {class: "empty", text: names.length ? "no run shown" : "no hparams logged"}));
      return;
    }
    const maximize = metric === primary.metric ? primary.maximize : false;
    const axes = names.map(name => axisOf(`hparams.${name}`, name))
      .concat([axisOf(`metrics.${metric}`, `${metric} (${maximize ? "higher" : "lower"} is better)`)]);
    const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img"});
    const xAt = i => M.left + i * (W - M.left - 150) / Math.max(1, axes.length - 1);  // room for the last title
    // colour by the metric: dark for the best runs, light for the worst, grey without a value
    const scores = members.map(run => lookup(run, `metrics.${metric}`)).filter(isNum);
    const [lo, hi] = scores.length ? extent(scores) : [0, 1];
    const shade = v => {
      if (!isNum(v)) return "#b0b7bf";
      let t = (v - lo) / (hi - lo);
      if (!maximize) t = 1 - t;
      const mix = (a, b) => Math.round(a + (b - a) * t);
      return `rgb(${mix(244, 13)},${mix(162, 71)},${mix(97, 161)})`;
    };
    members.forEach(run => {
      const pts = axes.map((axis, i) => `${xAt(i).toFixed(1)},${axis.pos(lookup(run, axis.key)).toFixed(1)}`).join(" ");
      const line = svgEl("polyline", {class: "pc-line", points: pts, stroke: shade(lookup(run, `metrics.${metric}`)),
                                      "data-run": run.name});
      line.append(svgEl("title", {}, `${runLabel(run)}: ${metric}=${fmt(lookup(run, `metrics.${metric}`))}`));
      svg.append(line);
    });
    axes.forEach((axis, i) => {
      const g = svgEl("g", {class: "axis"});
      g.append(svgEl("line", {class: "pc-axis", x1: xAt(i), x2: xAt(i), y1: M.top + 16, y2: H - M.bottom}));
      g.append(svgEl("text", {class: "axis-title", x: xAt(i), y: M.top + 4, "text-anchor": "middle"}, axis.title));
      axis.ticks.forEach(([ty, label]) => g.append(svgEl("text", {x: xAt(i) - 5, y: ty + 4, "text-anchor": "end"}, label)));
      g.append(svgEl("text", {x: xAt(i) - 5, y: H - M.bottom + 26, "text-anchor": "end"}, "missing"));
      svg.append(g);
    });
    holder.replaceChildren(svg);
  }

  function drawAll() { drawCurves(); drawBands(); drawParallel(); }

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
      section("Metric curves", "curves", [...control("metric", "curve-metric", metrics, firstMetric, drawCurves),
                                          ...control("x", "curve-x", axes, "step", drawCurves)]),
      section("Mean ± std by hparam", "bands", [...control("metric", "band-metric", metrics, firstMetric, drawBands),
                                                ...control("x", "band-x", axes, "step", drawBands),
                                                ...control("group by", "band-group", grouping, grouping[0], drawBands)]),
      section("Hparams vs a metric (parallel coordinates)", "parallel",
              control("metric", "parallel-metric", scored, scored.includes(primary.metric) ? primary.metric : scored[0],
                      drawParallel)),
      section("Each run: status, outputs, console tail", "details", [], el("div", {id: "details"}, runs.map(runDetail))));
    fillTable();
    drawAll();
  }

  build();
})();
