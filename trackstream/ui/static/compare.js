// Compare runs on one metric (#/p/<project>/compare?metric=loss&agg=min&by=lr[&runs=a,b][&higher=1]):
// a Tabulator table of runs or groups, best first, beside a uPlot bar chart of the values (or group means).
import { api, openEvents } from "./api.js";
import {
  el, field, fieldGroup, select, href, replaceHash, fmtNum, isFiniteNum, nanFlagText, multiSelect, orderMetrics,
  fmtValue, ellip, noun, escapeHtml,
} from "./util.js";

const AGGS = ["last", "min", "max", "mean", "first"];
const BARS_MAX = 30; // bars drawn (the table holds every row)

export async function mount(root, ctx) {
  const { project, query } = ctx;
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) }, { text: "Compare" }]);
  root.append(el("div", { class: "loading", text: "Loading…" }));
  const entity_type = ctx.type;
  // The project's metrics, params and run count: the first row of the runs table carries them for every run.
  const listing = await api("runs_table", { project, entity_type, size: 1 });
  if (!ctx.alive()) return null;

  const metrics = orderMetrics(listing.metrics);
  const paramNames = [...listing.params.differ, ...Object.keys(listing.params.same)].sort();
  const state = {
    metric: query.get("metric") || metrics[0],
    agg: AGGS.includes(query.get("agg")) ? query.get("agg") : "last",
    by: (query.get("by") || "").split(",").filter((p) => paramNames.includes(p)),
    runs: (query.get("runs") || "").split(",").filter(Boolean),
    higher: query.get("higher") === "1",
  };

  const disposers = [];
  let table = null;
  let u = null;
  let loadToken = 0;

  // -- controls ----------------------------------------------------------------------------------------
  const metricSelect = select(metrics.length ? metrics : [state.metric || ""], state.metric, (v) => { state.metric = v; reload(); });
  const aggSelect = select(AGGS, state.agg, (v) => { state.agg = v; reload(); });
  const byPicker = multiSelect({
    label: "Group by params", options: paramNames, selected: state.by, empty: "no grouping (one row per run)",
    onChange: (chosen) => { state.by = chosen; reload(); },
  });
  const higherBox = el("input", { type: "checkbox", checked: state.higher });
  higherBox.addEventListener("change", () => { state.higher = higherBox.checked; reload(); });
  const scope = el("span", { class: "muted count" });
  const summary = el("div", { class: "muted chart-note" });
  const tableHost = el("div", { class: "table-host" });
  const barsHost = el("div", { class: "bars-host" });
  const barsTitle = el("h2");

  root.replaceChildren(
    el("div", { class: "toolbar" },
      field("Metric", metricSelect),
      field("Aggregation", aggSelect),
      byPicker,
      fieldGroup("Order", el("label", { class: "check" }, higherBox, "higher is better")),
      el("span", { class: "spacer" }),
      scope),
    el("div", { class: "compare-layout" },
      tableHost,
      el("div", { class: "card bars-card" }, barsTitle, barsHost, summary)));

  function updateScope() {
    scope.replaceChildren();
    if (state.runs.length) {
      scope.append(`${state.runs.length} selected runs · `,
        el("a", { href: href(project, "compare", { ...hashQuery(), runs: [] }), text: `compare all ${noun(true)}` }));
    } else scope.append(`all ${listing.total} ${noun(true)} of ${project}`);
  }

  function hashQuery() {
    return { metric: state.metric, agg: state.agg, by: state.by, runs: state.runs, higher: state.higher ? 1 : "" };
  }

  // -- data -----------------------------------------------------------------------------------------------

  /** Best first: finite values by the chosen direction, then ±Inf, NaN and missing values. */
  function rank(v) {
    if (!isFiniteNum(v)) return Number.isNaN(v) || v === null || v === undefined ? 3 : 2;
    return 1;
  }
  function better(a, b) {
    const ra = rank(a);
    const rb = rank(b);
    if (ra !== rb) return ra - rb;
    if (ra !== 1) return 0;
    return state.higher ? b - a : a - b;
  }

  function flagCell(cell) {
    const text = nanFlagText(cell.getData());
    return text ? el("span", { class: "badge nanflag", text, title: `${state.metric}: ${text} (count@first step)` }) : "";
  }
  function numCell(cell) {
    const v = cell.getValue();
    return el("span", { class: isFiniteNum(v) || v === null || v === undefined ? "" : "nonfinite", text: fmtNum(v), title: v === null || v === undefined ? "" : String(v) });
  }
  function sorter(a, b, aRow, bRow, col, dir) {
    // Non-finite values stay at the bottom in both directions.
    const ra = rank(a);
    const rb = rank(b);
    if (ra !== rb) return (ra - rb) * (dir === "asc" ? 1 : -1);
    return ra === 1 ? a - b : 0;
  }

  function groupLabel(g) {
    return state.by.map((p) => `${p}=${fmtValue(g[p])}`).join(", ");
  }

  function columns(grouped, differing) {
    const common = { hozAlign: "right", sorter, formatter: numCell, width: 86 };
    const flag = { title: "NaN/Inf", field: "nan_count", minWidth: 80, formatter: flagCell, sorter: (a, b, ar, br) =>
      (ar.getData().nan_count + ar.getData().inf_count) - (br.getData().nan_count + br.getData().inf_count) };
    const rankCol = { title: "#", field: "_rank", width: 40, hozAlign: "right", headerSort: false, headerTooltip: "rank, best first" };
    if (grouped) {
      return [rankCol,
        ...state.by.map((p) => ({ title: escapeHtml(p), field: `_p_${p}`, headerFilter: "input", headerFilterPlaceholder: "filter", headerFilterParams: { elementAttributes: { "aria-label": `filter ${p}` } }, minWidth: 70,
          formatter: (c) => el("span", { text: fmtValue(c.getValue()), title: fmtValue(c.getValue()) }) })),
        { title: "runs", field: "runs", hozAlign: "right", width: 68, sorter: "number", headerTooltip: "runs in the group" },
        { title: "mean", field: "mean", ...common },
        flag,
        { title: "std", field: "std", ...common },
        { title: "min", field: "min", ...common },
        { title: "max", field: "max", ...common }];
    }
    return [rankCol,
      { title: "Name", field: "name", width: 170, headerFilter: "input", headerFilterPlaceholder: "filter", headerFilterParams: { elementAttributes: { "aria-label": "filter name" } },
        formatter: (c) => ellip(c.getValue(), { href: href(project, `run/${c.getData().id}`) }) },
      { title: state.agg, field: "value", ...common, headerTooltip: `${state.agg} of ${state.metric}` },
      { title: "step", field: "step", hozAlign: "right", width: 72, sorter: "number", headerTooltip: `step of the ${state.agg} value` },
      flag,
      ...differing.map((p) => ({ title: escapeHtml(p), field: `_p_${p}`, minWidth: 64, hozAlign: "right", headerFilter: "input", headerFilterPlaceholder: "filter", headerFilterParams: { elementAttributes: { "aria-label": `filter ${p}` } },
        formatter: (c) => el("span", { text: fmtValue(c.getValue()), title: fmtValue(c.getValue()) }) }))];
  }

  async function reload() {
    replaceHash(href(project, "compare", hashQuery()));
    updateScope();
    const token = ++loadToken;
    const grouped = state.by.length > 0;
    barsTitle.textContent = `${grouped ? "mean of " : ""}${state.agg} ${state.metric} — ${state.higher ? "higher" : "lower"} is better`;
    if (!state.metric) {
      summary.textContent = "This project has no metric yet.";
      return;
    }
    let result;
    try {
      result = await api("compare", {
        project, metric: state.metric, agg: state.agg, entity_type,
        ...(grouped ? { by: state.by } : {}), ...(state.runs.length ? { runs: state.runs } : {}),
      });
    } catch (err) {
      ctx.fail(err);
      return;
    }
    if (token !== loadToken || !ctx.alive()) return;
    const key = grouped ? "mean" : "value";
    result.sort((a, b) => better(a[key], b[key]));
    result.forEach((r, i) => {
      r._rank = i + 1;
      r._id = grouped ? `g${i}` : r.id;
      if (!grouped && !r.name) r.name = r.id; // a model's name is its id
      for (const p of grouped ? state.by : paramNames) r[`_p_${p}`] = grouped ? r[p] : (r.params || {})[p];
    });
    const differing = grouped ? [] : paramNames.filter((p) => new Set(result.map((r) => JSON.stringify((r.params || {})[p]))).size > 1);
    renderTable(result, grouped, differing);
    renderBars(result, grouped, key);
    const bad = result.filter((r) => r.nan_count > 0 || r.inf_count > 0).length;
    summary.textContent = `${result.length} ${grouped ? "groups" : noun(true)}` +
      (result.length > BARS_MAX ? ` · the best ${BARS_MAX} are drawn` : "") +
      (bad ? ` · ${bad} with NaN/Inf values (red in the table)` : "");
  }

  function renderTable(rows, grouped, differing) {
    if (table) table.destroy();
    table = new Tabulator(tableHost, {
      data: rows,
      index: "_id",
      height: "100%",
      layout: "fitData",
      renderVertical: "virtual",
      nestedFieldSeparator: false, // param names hold dots
      columns: columns(grouped, differing),
      columnDefaults: { headerTooltip: true },
      placeholder: "No run has this metric",
    });
  }

  function renderBars(rows, grouped, key) {
    const shown = rows.slice(0, BARS_MAX);
    // A non-finite value has no bar: its label says why.
    const labels = shown.map((r) => `${grouped ? groupLabel(r) : r.name || r.id}${isFiniteNum(r[key]) ? "" : ` (${fmtNum(r[key])})`}`);
    const xs = shown.map((_, i) => i);
    const ys = shown.map((r) => (isFiniteNum(r[key]) ? r[key] : null));
    if (u) {
      u.destroy();
      u = null;
    }
    if (!shown.length) return;
    const finite = ys.filter((v) => v !== null);
    const lo = Math.min(0, ...finite);
    const hi = Math.max(0, ...finite);
    const pad = (hi - lo) * 0.05 || 1;
    const short = (s) => (s.length > 26 ? `${s.slice(0, 25)}…` : s);
    u = new uPlot({
      width: Math.max(240, barsHost.clientWidth),
      height: Math.max(240, barsHost.clientHeight),
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      select: { show: false },
      scales: {
        // Horizontal bars: the category scale runs top to bottom, best first.
        x: { time: false, ori: 1, dir: -1, range: [-0.6, shown.length - 0.4] },
        y: { ori: 0, dir: 1, range: [lo < 0 ? lo - pad : 0, hi + pad] },
      },
      axes: [
        {
          scale: "x", side: 3, size: 170, gap: 4, grid: { show: false }, ticks: { show: false },
          font: "11px system-ui, sans-serif", stroke: "#374151",
          splits: () => xs, values: (_, splits) => splits.map((i) => (labels[i] === undefined ? "" : short(labels[i]))),
        },
        {
          scale: "y", side: 2, font: "11px system-ui, sans-serif", stroke: "#6b7280",
          grid: { stroke: "#eef0f3", width: 1 }, ticks: { stroke: "#dfe2e7", width: 1 },
          values: (_, splits) => splits.map((v) => fmtNum(v, 4)),
        },
      ],
      series: [
        {},
        {
          label: state.metric, fill: "rgba(37, 99, 235, 0.75)", stroke: "#2563eb", width: 0,
          paths: uPlot.paths.bars({ size: [0.7, 22], align: 0 }),
          points: { show: false },
        },
      ],
      hooks: {
        setCursor: [(uu) => {
          const i = uu.cursor.idx;
          if (i === null || i === undefined) {
            barsHost.title = "";
            return;
          }
          const r = shown[i];
          barsHost.title = `${labels[i]}: ${fmtNum(r[key], 6)}${grouped ? ` (${r.runs} runs, std ${fmtNum(r.std)})` : ` at step ${r.step}`}`;
        }],
      },
    }, [xs, ys], barsHost);
  }

  const resize = new ResizeObserver(() => {
    if (u) u.setSize({ width: Math.max(240, barsHost.clientWidth), height: Math.max(240, barsHost.clientHeight) });
  });
  resize.observe(barsHost);
  disposers.push(() => resize.disconnect());
  disposers.push(() => { if (table) table.destroy(); if (u) u.destroy(); });

  // Only for the project's alerts in the top bar: a comparison is read on demand, not live.
  const events = openEvents({ project, entity_type, states: false }, { alerts: ctx.alerts });
  disposers.push(() => events.close());

  await reload();
  return () => disposers.forEach((d) => d());
}
