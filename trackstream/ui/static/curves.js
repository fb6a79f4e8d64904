// Curves of runs (#/p/<project>/curves?metric=loss&runs=a,b): one uPlot chart, live from the event stream.
//
// Per run the chart has: a min/max band (two invisible series joined by a uPlot band), rank lines (optional),
// the bucket averages (faint behind a smoothed line when smoothing is on), and red NaN/Inf markers on a scale of
// their own fixed to [0, 1], so they sit at the top of the plot whatever the y range.
import { api, openEvents, mapLimit } from "./api.js";
import {
  el, field, fieldGroup, select, href, replaceHash, fmtNum, isFiniteNum, statusBadge, assignColors, alpha, pref, setPref,
  seriesMetricNames, throttle, fmtDuration, noun, orderMetrics,
} from "./util.js";

const POINTS = 1000; // buckets per curve
const ZOOM_HISTORY_MAX = 20000; // points per run in a zoomed range to read at full resolution
const HISTORY_CAP = 300000; // points per run beyond which a whole history is not fetched
const RANK_POINTS_MAX = 5000; // points per rank line drawn (thinned beyond)
const DEFAULT_RUNS = 10;
const RED = "#d92d20";

export async function mount(root, ctx) {
  const { project, query } = ctx;
  const entity_type = ctx.type;
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) }, { text: "Curves" }]);
  root.append(el("div", { class: "loading", text: "Loading…" }));
  const asked = (query.get("runs") || "").split(",").filter(Boolean);
  // The runs named (only those are read), else the newest ones (the runs table's first rows).
  const newest = asked.length ? null : await api("runs_table", { project, entity_type, size: DEFAULT_RUNS });
  const rows = newest ? newest.data : await api("runs", { project, entity_type, runs: asked });
  if (!ctx.alive()) return null;

  const metrics = newest ? orderMetrics(newest.series) : seriesMetricNames(rows);
  const metric = query.get("metric") || metrics[0];
  let runIds = asked;
  if (!runIds.length) {
    runIds = rows.map((r) => r.id);
    replaceHash(href(project, "curves", { metric, runs: runIds }));
  }
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) },
    { text: `Curves · ${metric || "no metric"}` }]);

  const info = new Map(rows.filter((r) => runIds.includes(r.id)).map((r) => [r.id, r]));
  const colors = assignColors(runIds);
  const nameOf = (id) => (info.get(id) && info.get(id).name) || id;
  const rankCount = (id) => new Set(((info.get(id) || {}).ranks || []).map((r) => r.rank)).size;
  const summaryOf = (id) => ((info.get(id) || {}).metrics || {})[metric];
  const distributed = runIds.filter((id) => rankCount(id) > 1);

  // -- state -----------------------------------------------------------------------------------------
  const settings = {
    smoothing: pref("curves.smoothing", "none"), // none | ema | window
    weight: pref("curves.weight", 0.6),
    window: pref("curves.window", 10),
    x: pref("curves.x", "step"), // step | wall | rel
    log: pref("curves.log", false),
    ranks: pref("curves.ranks", false),
  };
  const buckets = new Map(); // run -> [bucket]
  const history = new Map(); // run -> {steps, values, times} (Float64Arrays; times in s)
  const rankLines = new Map(); // run -> [{rank, steps, values, times}]
  const hidden = new Set();
  const pending = new Set(); // history fetches in flight
  let zoom = null; // {min, max} in x units while the user zoomed
  let zoomed = null; // step axis: {from, to, buckets: Map run -> buckets} re-queried for the zoomed range
  let u = null;
  let structureKey = "";
  let perRun = new Map(); // run -> {xs, values, steps} as drawn, for the cursor readout
  let roles = []; // per uPlot series from 1: {run, role}
  const disposers = [];

  // -- controls ----------------------------------------------------------------------------------------
  const metricSelect = select(metrics.length ? metrics : [metric], metric, (m) => {
    location.hash = href(project, "curves", { metric: m, runs: runIds });
  });
  const smoothingSelect = select([["none", "none"], ["ema", "EMA"], ["window", "moving window"]], settings.smoothing,
    (v) => { settings.smoothing = v; setPref("curves.smoothing", v); syncControls(); refresh(); });
  const weightInput = el("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: String(settings.weight) });
  const weightValue = el("span", { class: "mono", text: settings.weight.toFixed(2) });
  weightInput.addEventListener("input", () => {
    settings.weight = Number(weightInput.value);
    weightValue.textContent = settings.weight.toFixed(2);
    setPref("curves.weight", settings.weight);
    refresh();
  });
  const windowInput = el("input", { type: "number", min: "1", max: "1000", step: "1", value: String(settings.window) });
  windowInput.addEventListener("input", () => {
    const n = Math.max(1, Math.min(1000, Math.round(Number(windowInput.value)) || 1));
    settings.window = n;
    setPref("curves.window", n);
    refresh();
  });
  const weightField = field("EMA weight", el("span", { class: "field inline" }, weightInput, weightValue), "smooth-param");
  const windowField = field("Window (buckets)", windowInput, "smooth-param");

  const timeOk = timeAvailable();
  if (!timeOk.ok && settings.x !== "step") settings.x = "step";
  const xSeg = segmented("x", [["step", "step"], ["wall", "wall time"], ["rel", "relative time"]], settings.x, (v) => {
    settings.x = v;
    setPref("curves.x", v);
    zoom = null;
    ensureData().then(refresh);
  }, timeOk.ok ? [] : ["wall", "rel"], timeOk.ok ? "" : timeOk.why);
  const ySeg = segmented("y", [["lin", "linear"], ["log", "log"]], settings.log ? "log" : "lin", (v) => {
    settings.log = v === "log";
    setPref("curves.log", settings.log);
    refresh();
  });
  const ranksBox = el("input", { type: "checkbox", checked: settings.ranks && distributed.length > 0, disabled: !distributed.length });
  ranksBox.addEventListener("change", () => {
    settings.ranks = ranksBox.checked;
    setPref("curves.ranks", settings.ranks);
    ensureData().then(refresh);
  });
  const ranksLabel = el("label", {
    class: `check ${distributed.length ? "" : "disabled"}`,
    title: distributed.length ? `one faint line per rank for ${distributed.length} distributed run(s)` : "none of these runs has more than one rank",
  }, ranksBox, "per-rank lines");
  const resetButton = el("button", { type: "button", class: "btn", text: "Reset zoom", disabled: true });
  resetButton.addEventListener("click", () => {
    zoom = null;
    resetButton.disabled = true;
    refresh(true);
  });

  const chartHost = el("div", { class: "chart-host" });
  const chartNote = el("div", { class: "chart-note" });
  const readout = el("div", { class: "legend-readout" });
  const legendRows = el("div", { class: "legend-rows" });

  root.replaceChildren(
    el("div", { class: "toolbar" },
      field("Metric", metricSelect),
      field("Smoothing", smoothingSelect), weightField, windowField,
      fieldGroup("X axis", xSeg),
      fieldGroup("Y axis", ySeg),
      fieldGroup("Ranks", ranksLabel),
      el("span", { class: "spacer" }),
      resetButton,
      el("a", {
        class: "btn", href: href(project), text: `Choose ${noun(true)}…`, title: `Select ${noun(true)} in the table`,
        // The runs table starts with these runs selected.
        on: { click: () => { try { sessionStorage.setItem(`trackstream.selected.${project}`, JSON.stringify(runIds)); } catch { /* ignore */ } } },
      })),
    el("div", { class: "curves-layout" },
      el("div", { class: "card chart-card" }, chartHost, chartNote),
      el("div", { class: "card legend" },
        el("h2", { text: `${noun(true, true)} (${runIds.length})` }), readout, legendRows)));
  syncControls();

  function syncControls() {
    weightField.hidden = settings.smoothing !== "ema";
    windowField.hidden = settings.smoothing !== "window";
  }

  function segmented(name, options, value, onChange, disabled = [], why = "") {
    const group = el("span", { class: "seg", role: "radiogroup" });
    for (const [v, text] of options) {
      const input = el("input", { type: "radio", name: `seg-${name}`, value: v, checked: v === value, disabled: disabled.includes(v) });
      input.addEventListener("change", () => input.checked && onChange(v));
      group.append(el("label", { title: disabled.includes(v) ? why : text }, input, text));
    }
    return group;
  }

  /** Time axes need every run's history (time_ns per step): only when all of them are small enough. */
  function timeAvailable() {
    const big = runIds.filter((id) => ((summaryOf(id) || {}).count || 0) > HISTORY_CAP);
    if (big.length) {
      return { ok: false, why: `time axes need each run's full history; ${big.map(nameOf).join(", ")} has more than ${HISTORY_CAP} points (the curves API has no time per bucket)` };
    }
    return { ok: true };
  }

  // -- data: history and rank lines -----------------------------------------------------------------------

  async function loadHistory(id) {
    if (pending.has(`h:${id}`)) return;
    pending.add(`h:${id}`);
    try {
      const pts = await api("history", { project, entity_id: id, entity_type, metric, ranks: false });
      const n = pts.length;
      const h = { steps: new Float64Array(n), values: new Float64Array(n), times: new Float64Array(n) };
      pts.forEach((p, i) => {
        h.steps[i] = p.step;
        h.values[i] = p.value;
        h.times[i] = p.time_ns / 1e9;
      });
      history.set(id, h);
    } finally {
      pending.delete(`h:${id}`);
    }
  }

  async function loadRanks(id) {
    if (pending.has(`r:${id}`)) return;
    pending.add(`r:${id}`);
    try {
      const pts = await api("history", { project, entity_id: id, entity_type, metric, ranks: true });
      const by = new Map();
      for (const p of pts) {
        if (!by.has(p.rank)) by.set(p.rank, []);
        by.get(p.rank).push(p);
      }
      const lines = [];
      for (const [rank, list] of [...by.entries()].sort((a, b) => a[0] - b[0])) {
        const stride = Math.ceil(list.length / RANK_POINTS_MAX); // thinned: these lines are context only
        const kept = stride > 1 ? list.filter((_, i) => i % stride === 0) : list;
        lines.push({
          rank, thinned: stride > 1,
          steps: Float64Array.from(kept, (p) => p.step),
          values: Float64Array.from(kept, (p) => p.value),
          times: Float64Array.from(kept, (p) => p.time_ns / 1e9),
        });
      }
      rankLines.set(id, lines);
    } finally {
      pending.delete(`r:${id}`);
    }
  }

  /** Step axis: the buckets of the zoomed range (and as much again on each side, for panning), from the server:
   * at most 1000 per run, so a narrow range comes back at full resolution (one bucket per step). */
  async function loadZoom() {
    if (!zoom || settings.x !== "step") {
      zoomed = null;
      return;
    }
    const span = zoom.max - zoom.min;
    const from = Math.floor(zoom.min - span);
    const to = Math.ceil(zoom.max + span);
    if (zoomed && zoomed.from === from && zoomed.to === to) return;
    const result = await api("curves", { project, runs: runIds, entity_type, metric, points: 1000, step_from: from, step_to: to });
    zoomed = { from, to, buckets: new Map(Object.entries(result)) };
  }

  /** Fetches what the current settings need: histories for time axes, a zoom's buckets, rank lines. */
  async function ensureData() {
    const jobs = [];
    const timeMode = settings.x !== "step";
    if (!timeMode && zoom) jobs.push(loadZoom);
    if (!zoom) zoomed = null;
    for (const id of runIds) {
      const count = (summaryOf(id) || {}).count || 0;
      const needHistory = timeMode || (zoom && zoomWantsHistory(id));
      if (needHistory && !history.has(id) && count <= HISTORY_CAP) jobs.push(() => loadHistory(id));
      if (settings.ranks && rankCount(id) > 1 && !rankLines.has(id)) jobs.push(() => loadRanks(id));
    }
    if (!jobs.length) return;
    chartNote.textContent = "Loading full-resolution points…";
    try {
      await mapLimit(jobs, 4, (job) => job());
    } catch (err) {
      ctx.fail(err);
    }
  }

  /** In step mode, whether a zoom into [min, max] holds few enough points to read the run's history. */
  function zoomWantsHistory(id) {
    if (!zoom) return false;
    const count = (summaryOf(id) || {}).count || 0;
    if (count > HISTORY_CAP) return false;
    const b = buckets.get(id) || [];
    if (!b.some((x) => x.step_to > x.step_from)) return false; // already one point per bucket
    if (settings.x === "step") return false; // the step axis re-queries buckets for the range (loadZoom)
    return true; // time axes: decided on the loaded history (pointsIn)
  }

  // -- x mapping ----------------------------------------------------------------------------------------

  /** Seconds at `step` for run `id` from its history (interpolated; extrapolated past the last point). */
  function timeAt(id, step) {
    const h = history.get(id);
    if (!h || !h.steps.length) return null;
    const s = h.steps;
    const t = h.times;
    const n = s.length;
    if (n === 1) return t[0];
    let lo = 0;
    let hi = n - 1;
    if (step <= s[0]) return t[0] - (s[0] - step) * rate(0, 1);
    if (step >= s[n - 1]) return t[n - 1] + (step - s[n - 1]) * rate(n - 2, n - 1);
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (s[mid] <= step) lo = mid; else hi = mid;
    }
    return t[lo] + (step - s[lo]) * rate(lo, hi);
    function rate(i, j) { return s[j] > s[i] ? (t[j] - t[i]) / (s[j] - s[i]) : 0; }
  }

  function xOfStep(id, step, time) {
    if (settings.x === "step") return step;
    const t = time !== undefined ? time : timeAt(id, step);
    if (t === null) return null;
    if (settings.x === "wall") return t;
    const h = history.get(id);
    return t - (h && h.times.length ? h.times[0] : t);
  }

  // -- building the chart's data --------------------------------------------------------------------------

  const clean = (v) => (isFiniteNum(v) && (!settings.log || v > 0) ? v : null);

  function smooth(values) {
    const out = new Array(values.length).fill(null);
    if (settings.smoothing === "ema") {
      // TensorBoard's debiased exponential moving average; gaps keep the previous value.
      const w = settings.weight;
      let last = 0;
      let n = 0;
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (v === null) continue;
        last = last * w + (1 - w) * v;
        n++;
        out[i] = w === 0 ? v : last / (1 - w ** n);
      }
    } else if (settings.smoothing === "window") {
      const n = settings.window;
      const win = [];
      let sum = 0;
      for (let i = 0; i < values.length; i++) {
        const v = values[i];
        if (v === null) continue;
        win.push(v);
        sum += v;
        if (win.length > n) sum -= win.shift();
        out[i] = sum / win.length;
      }
    }
    if (settings.log) for (let i = 0; i < out.length; i++) if (out[i] !== null && out[i] <= 0) out[i] = null;
    return out;
  }

  /** One run's points: buckets, with its history in place of the buckets inside a zoomed window. */
  function runPoints(id) {
    const b = buckets.get(id) || [];
    const pts = []; // {x, v, lo, hi, flag, step}
    const h = history.get(id);
    let window = null;
    if (zoom && h && zoomWantsHistory(id)) {
      const span = zoom.max - zoom.min;
      const from = zoom.min - span;
      const to = zoom.max + span;
      // Points of the history inside [from, to] (in x units).
      const inWin = [];
      for (let i = 0; i < h.steps.length; i++) {
        const x = xOfStep(id, h.steps[i], h.times[i]);
        if (x >= from && x <= to) inWin.push(i);
      }
      let visible = 0;
      for (const i of inWin) {
        const x = xOfStep(id, h.steps[i], h.times[i]);
        if (x >= zoom.min && x <= zoom.max) visible++;
      }
      if (inWin.length && visible <= ZOOM_HISTORY_MAX) {
        window = { first: h.steps[inWin[0]], last: h.steps[inWin[inWin.length - 1]], idx: inWin };
      }
    }
    const zb = zoom && zoomed && settings.x === "step" ? zoomed.buckets.get(id) : null;
    if (zb) {
      window = { first: zoomed.from, last: zoomed.to, idx: [] };
      for (const k of zb) {
        const step = (k.step_from + k.step_to) / 2;
        pts.push({ x: step, v: clean(k.avg), raw: k.avg, lo: clean(k.min), hi: clean(k.max), flag: k.nan_count > 0 || k.inf_count > 0, step });
      }
    }
    for (const k of b) {
      if (window && k.step_to >= window.first && k.step_from <= window.last) continue; // the zoom's points cover it
      const step = (k.step_from + k.step_to) / 2;
      const x = xOfStep(id, step);
      if (x === null) continue;
      pts.push({ x, v: clean(k.avg), raw: k.avg, lo: clean(k.min), hi: clean(k.max), flag: k.nan_count > 0 || k.inf_count > 0, step });
    }
    if (window) {
      for (const i of window.idx) {
        const v = h.values[i];
        const x = xOfStep(id, h.steps[i], h.times[i]);
        pts.push({ x, v: clean(v), raw: v, lo: clean(v), hi: clean(v), flag: !Number.isFinite(v), step: h.steps[i] });
      }
    }
    pts.sort((a, b2) => a.x - b2.x);
    // uPlot.join needs strictly increasing x per table.
    const out = [];
    for (const p of pts) if (!out.length || p.x > out[out.length - 1].x) out.push(p);
    return { pts: out, fromHistory: Boolean(window) };
  }

  function build() {
    const tables = [];
    const series = [{}];
    const bands = [];
    const roles = []; // per uPlot series index (from 1): {run, role}
    let fromHistory = 0;
    perRun = new Map();
    const smoothing = settings.smoothing !== "none";
    for (const id of runIds) {
      const color = colors.get(id);
      const show = !hidden.has(id);
      const { pts, fromHistory: fh } = runPoints(id);
      if (fh) fromHistory++;
      const xs = pts.map((p) => p.x);
      const raw = pts.map((p) => p.v);
      const sm = smoothing ? smooth(raw) : null;
      perRun.set(id, { xs, values: sm || raw, raw: pts.map((p) => p.raw), steps: pts.map((p) => p.step) });
      const base = series.length;
      const table = [xs, pts.map((p) => p.lo), pts.map((p) => p.hi), raw];
      series.push(
        { label: `${nameOf(id)} min`, scale: "y", stroke: "transparent", width: 0, points: { show: false }, show },
        { label: `${nameOf(id)} max`, scale: "y", stroke: "transparent", width: 0, points: { show: false }, show },
        { label: nameOf(id), scale: "y", stroke: smoothing ? alpha(color, 0.3) : color, width: smoothing ? 1 : 1.5, show, points: { show: false } },
      );
      roles.push({ run: id, role: "min" }, { run: id, role: "max" }, { run: id, role: "raw" });
      bands.push({ series: [base + 1, base], fill: alpha(color, 0.14) });
      if (smoothing) {
        table.push(sm);
        series.push({ label: `${nameOf(id)} (smoothed)`, scale: "y", stroke: color, width: 1.75, show, points: { show: false } });
        roles.push({ run: id, role: "smooth" });
      }
      table.push(pts.map((p) => (p.flag ? 0.985 : null)));
      series.push({
        label: `${nameOf(id)} NaN/Inf`, scale: "flag", show, paths: () => null,
        points: { show: true, size: 7, width: 1.5, stroke: RED, fill: color },
      });
      roles.push({ run: id, role: "flag" });
      tables.push(table);
      if (settings.ranks && rankLines.has(id)) {
        for (const line of rankLines.get(id)) {
          const rx = [];
          const rv = [];
          for (let i = 0; i < line.steps.length; i++) {
            const x = xOfStep(id, line.steps[i], settings.x === "step" ? undefined : line.times[i]);
            if (x === null || (rx.length && x <= rx[rx.length - 1])) continue;
            rx.push(x);
            rv.push(clean(line.values[i]));
          }
          tables.push([rx, rv]);
          series.push({ label: `${nameOf(id)} rank ${line.rank}`, scale: "y", stroke: alpha(color, 0.55), width: 1, show, points: { show: false } });
          roles.push({ run: id, role: "rank", rank: line.rank });
        }
      }
    }
    const data = tables.length ? uPlot.join(tables) : [[]];
    return { data, series, bands, roles, fromHistory };
  }

  // -- the chart ----------------------------------------------------------------------------------------

  const REL_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  function options(built) {
    const xLabel = { step: "step", wall: "wall time", rel: "time since start" }[settings.x];
    return {
      width: Math.max(300, chartHost.clientWidth),
      height: chartHost.clientHeight || 470,
      series: built.series,
      bands: built.bands,
      legend: { show: false },
      cursor: {
        drag: { x: true, y: false, setScale: true },
        points: { show: false },
      },
      scales: {
        x: { time: settings.x === "wall" },
        y: settings.log ? { distr: 3, log: 10 } : { auto: true },
        flag: { auto: false, range: [0, 1] },
      },
      axes: [
        {
          label: xLabel, labelSize: 18, labelFont: "11px system-ui, sans-serif", font: "11px system-ui, sans-serif",
          stroke: "#6b7280", grid: { stroke: "#eef0f3", width: 1 }, ticks: { stroke: "#dfe2e7", width: 1 },
          ...(settings.x === "rel" ? { incrs: REL_INCRS, values: (_, splits) => splits.map((s) => fmtDuration(s * 1000)) } : {}),
        },
        {
          scale: "y", label: metric, labelSize: 18, labelFont: "11px system-ui, sans-serif", font: "11px system-ui, sans-serif",
          stroke: "#6b7280", grid: { stroke: "#eef0f3", width: 1 }, ticks: { stroke: "#dfe2e7", width: 1 }, size: 58,
          values: (_, splits) => splits.map((v) => (v === null ? null : fmtNum(v, 4))), // null: an unlabelled log tick
        },
      ],
      hooks: {
        setScale: [(uu, key) => { if (key === "x") onXScale(uu); }],
        setCursor: [(uu) => showReadout(uu)],
      },
    };
  }

  function dataExtent(data) {
    const xs = data[0];
    return xs.length ? [xs[0], xs[xs.length - 1]] : [0, 0];
  }

  function onXScale(uu) {
    const { min, max } = uu.scales.x;
    if (min === null || max === null) return;
    const [x0, x1] = dataExtent(uu.data);
    const eps = Math.max(1e-9, (x1 - x0) * 1e-9);
    const zoomed = min > x0 + eps || max < x1 - eps;
    const before = zoom;
    zoom = zoomed ? { min, max } : null;
    resetButton.disabled = !zoom;
    if (zoomed && (!before || before.min !== min || before.max !== max)) zoomChanged();
    if (!zoomed && before) zoomChanged();
  }

  // A zoom may call for full-resolution points: fetched, then redrawn (keeping the zoom).
  const zoomChanged = debounce(async () => {
    await ensureData();
    if (ctx.alive()) refresh();
  }, 250);

  function structure(built) {
    return JSON.stringify([settings.x, settings.log, settings.smoothing !== "none", built.roles.map((r) => `${r.run}:${r.role}:${r.rank ?? ""}`)]);
  }

  let frame = 0;
  let forceReset = false;
  /** Redraws on the next animation frame (many events in a row draw once). */
  function refresh(resetScales = false) {
    forceReset = forceReset || resetScales;
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      draw(forceReset);
      forceReset = false;
    });
  }

  function draw(resetScales) {
    const built = build();
    roles = built.roles;
    const key = structure(built);
    if (!u || key !== structureKey) {
      if (u) u.destroy();
      structureKey = key;
      u = new uPlot(options(built), built.data, chartHost);
      if (zoom && !resetScales) u.setScale("x", { ...zoom });
    } else if (zoom && !resetScales) {
      u.setData(built.data, false);
      u.setScale("x", { ...zoom }); // also re-fits y to the zoomed window
    } else {
      u.setData(built.data, true);
    }
    updateNote(built);
    renderLegend();
    showReadout(u);
  }

  function updateNote(built) {
    const parts = [];
    const total = runIds.filter((id) => (buckets.get(id) || []).length).length;
    if (!total) parts.push(buckets.size ? `No ${metric} points for these runs yet.` : "Waiting for the curves…");
    if (zoom && zoomed && settings.x === "step") {
      const widths = [...zoomed.buckets.values()].flat().map((k) => k.step_to - k.step_from + 1);
      parts.push(widths.length && Math.max(...widths) === 1 ? "zoomed: every step (full resolution)"
        : `zoomed: buckets re-read for steps ${zoomed.from}–${zoomed.to}`);
    } else if (built.fromHistory) parts.push(`zoomed: ${built.fromHistory} run(s) at full resolution`);
    else if (zoom) parts.push("zoomed (downsampled buckets: no finer points to show)");
    else if (total) parts.push(`up to ${POINTS} buckets per run; band: min–max per bucket; drag to zoom, double-click to reset`);
    if (settings.x !== "step") parts.push("time axis from each run's history (time of each step)");
    if (settings.ranks && [...rankLines.values()].some((ls) => ls.some((l) => l.thinned))) parts.push(`rank lines thinned to ${RANK_POINTS_MAX} points`);
    chartNote.textContent = parts.join(" · ");
  }

  // -- legend and readout ---------------------------------------------------------------------------------

  function nanNote(id) {
    const s = summaryOf(id);
    const b = buckets.get(id) || [];
    const out = [];
    for (const kind of ["nan", "inf"]) {
      const label = kind === "nan" ? "NaN" : "Inf";
      let exact = s && s[`${kind}_count`] > 0 ? s[`first_${kind}_step`] : null;
      if (exact !== null && exact !== undefined) {
        out.push(`${label} from step ${exact}`);
        continue;
      }
      const first = b.find((k) => k[`${kind}_count`] > 0);
      if (first) out.push(first.step_from === first.step_to ? `${label} from step ${first.step_from}` : `${label} in steps ${first.step_from}–${first.step_to}`);
    }
    return out.join(", ");
  }

  let legendKey = "";
  const valueCells = new Map();
  function renderLegend() {
    const key = JSON.stringify(runIds.map((id) => [id, hidden.has(id), (info.get(id) || {}).status, nanNote(id), (buckets.get(id) || []).length > 0]));
    if (key === legendKey) return;
    legendKey = key;
    valueCells.clear();
    legendRows.replaceChildren(...runIds.map((id) => {
      const r = info.get(id);
      const value = el("span", { class: "legend-value" });
      valueCells.set(id, value);
      const nn = nanNote(id);
      const hasData = (buckets.get(id) || []).length > 0;
      const row = el("div", { class: `legend-row ${hidden.has(id) ? "off" : ""}`, title: `${nameOf(id)} (${id}) — click to hide/show` },
        el("span", { class: "legend-swatch", style: { background: colors.get(id) } }),
        el("span", { class: "legend-name ellip", text: nameOf(id) }),
        value,
        el("span", { class: "legend-sub" },
          r ? statusBadge(r.status) : el("span", { class: "muted", text: `unknown ${noun()}` }),
          el("a", { href: href(project, `run/${id}`), text: noun(), title: `${noun()} page of ${nameOf(id)}`, on: { click: (e) => e.stopPropagation() } }),
          rankCount(id) > 1 ? el("span", { class: "muted", text: `${rankCount(id)} ranks` }) : null,
          !hasData && buckets.size ? el("span", { class: "muted", text: `no ${metric}` }) : null,
          nn ? el("span", { class: "legend-nan", text: nn }) : null));
      row.addEventListener("click", () => toggleRun(id));
      return row;
    }));
  }

  function toggleRun(id) {
    if (hidden.has(id)) hidden.delete(id); else hidden.add(id);
    if (u) {
      u.batch(() => {
        // Each run's series are contiguous; series 0 is x.
        roles.forEach((r, i) => { if (r.run === id) u.setSeries(i + 1, { show: !hidden.has(id) }); });
      });
    }
    legendKey = "";
    renderLegend();
    showReadout(u);
  }

  function nearest(xs, x) {
    let lo = 0;
    let hi = xs.length - 1;
    if (hi < 0) return -1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] <= x) lo = mid; else hi = mid;
    }
    return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
  }

  function showReadout(uu) {
    if (!uu) return;
    const left = uu.cursor.left;
    const hover = left !== undefined && left >= 0;
    const x = hover ? uu.posToVal(left, "x") : null;
    for (const id of runIds) {
      const cell = valueCells.get(id);
      const d = perRun.get(id);
      const own = buckets.get(id) || [];
      // the newest step drawn, for scripts and tests that watch the page (data-last-step)
      if (cell && own.length) cell.dataset.lastStep = String(own[own.length - 1].step_to);
      if (!cell || !d || !d.xs.length) {
        if (cell) cell.textContent = "";
        continue;
      }
      const i = hover ? nearest(d.xs, x) : d.xs.length - 1;
      // The drawn (maybe smoothed) value; where nothing is drawn, the bucket's own value (NaN, Inf, or <= 0 on log).
      const v = d.values[i] !== null ? d.values[i] : d.raw[i];
      cell.textContent = fmtNum(v, 5);
      cell.classList.toggle("nonfinite", !isFiniteNum(v));
      cell.title = `step ${fmtNum(d.steps[i])}`;
    }
    if (hover) {
      const xText = settings.x === "step" ? `step ${fmtNum(Math.round(x))}`
        : settings.x === "wall" ? new Date(x * 1000).toLocaleString() : fmtDuration(x * 1000);
      readout.textContent = `at ${xText}${settings.smoothing !== "none" ? " (smoothed)" : ""}`;
    } else {
      readout.textContent = `last values${settings.smoothing !== "none" ? " (smoothed)" : ""}`;
    }
  }

  // -- live ----------------------------------------------------------------------------------------------

  const refreshHistories = throttle(async () => {
    // Time axes map steps to times through the histories: re-read those of runs that moved past them.
    const stale = runIds.filter((id) => {
      const h = history.get(id);
      const b = buckets.get(id) || [];
      return h && b.length && b[b.length - 1].step_to > (h.steps.length ? h.steps[h.steps.length - 1] : -1);
    });
    const rankStale = settings.ranks ? runIds.filter((id) => rankLines.has(id) && (info.get(id) || {}).status === "running") : [];
    if (!stale.length && !rankStale.length) return;
    try {
      await mapLimit([...stale.map((id) => () => loadHistory(id)), ...rankStale.map((id) => () => loadRanks(id))], 4, (j) => j());
      if (ctx.alive()) refresh();
    } catch (err) {
      ctx.fail(err);
    }
  }, 5000);

  if (metric && runIds.length) {
    const events = openEvents({ project, entity_type, metric, runs: runIds, points: POINTS }, {
      curves: ({ curves }) => {
        for (const [id, c] of Object.entries(curves)) buckets.set(id, c.buckets);
        afterData();
      },
      buckets: ({ buckets: fresh }) => {
        for (const [id, list] of Object.entries(fresh)) {
          if (!list.length) continue;
          const mine = buckets.get(id) || [];
          const from = list[0].step_from;
          buckets.set(id, mine.filter((k) => k.step_from < from).concat(list));
        }
        afterData();
      },
      runs: ({ runs }) => {
        for (const r of runs) if (runIds.includes(r.id)) info.set(r.id, Object.assign(info.get(r.id) || {}, r));
        renderLegend();
      },
      alerts: ctx.alerts,
      problem: ({ message }) => ctx.problem(message),
    }, ctx.live);
    disposers.push(() => events.close());
  } else {
    chartNote.textContent = metric ? "No runs chosen." : "This project has no series metric yet.";
  }

  function afterData() {
    // The newest step received, for a look from outside (tests, the curious) without reaching into the chart.
    let newest = -Infinity;
    for (const list of buckets.values()) if (list.length) newest = Math.max(newest, list[list.length - 1].step_to);
    if (Number.isFinite(newest)) chartHost.dataset.lastStep = String(newest);
    if (settings.x !== "step" || settings.ranks) {
      ensureData().then(() => { if (ctx.alive()) refresh(); });
      refreshHistories();
    }
    refresh();
  }

  const resize = new ResizeObserver(() => {
    if (u) u.setSize({ width: Math.max(300, chartHost.clientWidth), height: chartHost.clientHeight || 470 });
  });
  resize.observe(chartHost);
  disposers.push(() => resize.disconnect());
  disposers.push(() => { if (frame) cancelAnimationFrame(frame); if (u) u.destroy(); });

  await ensureData();
  if (ctx.alive() && !u) refresh();
  return () => disposers.forEach((d) => d());
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}
