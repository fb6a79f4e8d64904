// One run (#/p/<project>/run/<id>): state, params, tags, ranks, and every metric (sparklines, single values).
import { api, openEvents, mapLimit } from "./api.js";
import {
  el, href, fmtNum, fmtDuration, durationMs, fmtDateTime, fmtValue, isFiniteNum, statusBadge, nanBadge, ellip, noun,
} from "./util.js";

const SPARK_POINTS = 200;
const SPARKS_REFRESH_MS = 5000; // while the run runs
const METRICS_REFRESH_MS = 30000; // new metrics and single values, while the run runs
const RED = "#d92d20";
const LINE = "#2563eb";

export async function mount(root, ctx) {
  const { project, id } = ctx;
  const entity_type = ctx.type;
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) }, { text: id }]);
  root.append(el("div", { class: "loading", text: `Loading ${noun()}…` }));
  const [run, metricValues, models] = await Promise.all([
    api("entity", { project, entity_id: id, entity_type }),
    api("entity_metrics", { entity: { project, type: entity_type, id } }),
    entity_type === "model" ? api("runs", { project, entity_type }).catch(() => []) : [],
  ]);
  if (!ctx.alive()) return null;
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) }, { text: run.name || id }]);

  const disposers = [];
  const sparks = new Map(); // metric -> {u, host, stats}
  let singles = {};
  let series = [];

  // -- layout ------------------------------------------------------------------------------------------
  const status = el("span");
  const duration = el("span", { class: "mono" });
  const times = el("span", { class: "muted" });
  const ranksCard = el("section", { class: "card" });
  const singlesCard = el("section", { class: "card" });
  const seriesGrid = el("div", { class: "metric-grid" });
  const seriesCard = el("section", { class: "card" }, el("h2", { text: "Series" }), seriesGrid);

  root.replaceChildren(
    el("div", { class: "run-head" },
      el("h1", { text: run.name || id, title: run.name || id }),
      status,
      el("span", { class: "mono muted", text: id, title: `${noun()} id` }),
      el("span", { class: "muted", text: "duration" }), duration,
      times),
    el("div", { class: "run-grid" },
      el("div", { class: "run-side" },
        kvCard("Params", run.params || {}),
        kvCard("Tags", run.tags || {}),
        singlesCard),
      el("div", { class: "run-side" }, seriesCard, versionsCard(), ranksCard)));

  /** A model's versions (ids `name:version` of the same name), each with the last value of every metric. */
  function versionsCard() {
    if (entity_type !== "model") return null;
    const name = id.includes(":") ? id.slice(0, id.lastIndexOf(":")) : id;
    const versions = models.filter((m) => m.id === name || m.id.startsWith(`${name}:`))
      .sort((a, b) => String(a.started_at).localeCompare(String(b.started_at)));
    const names = [...new Set(versions.flatMap((m) => Object.keys(m.metrics || {})))].sort();
    return el("section", { class: "card versions" },
      el("h2", { text: `Versions of ${name} (${versions.length})` }),
      el("table", { class: "kvtable versions-table" },
        el("thead", {}, el("tr", {}, el("th", { text: "version" }), el("th", { text: "status" }),
          names.map((m) => el("th", { class: "num", text: m, title: `${m}: last value` })))),
        el("tbody", {}, versions.map((m) => el("tr", { class: m.id === id ? "current" : "" },
          el("td", {}, m.id === id ? el("b", { text: m.id }) : el("a", { href: href(project, `run/${m.id}`), text: m.id })),
          el("td", {}, statusBadge(m.status)),
          names.map((k) => {
            const s = (m.metrics || {})[k];
            const v = s ? s.last : null;
            return el("td", { class: `num mono ${v === null || isFiniteNum(v) ? "" : "nonfinite"}`, text: fmtNum(v) });
          }))))));
  }

  function kvCard(title, obj) {
    const entries = Object.entries(obj).sort(([a], [b]) => a.localeCompare(b));
    return el("section", { class: "card" },
      el("h2", { text: `${title} (${entries.length})` }),
      entries.length
        ? el("table", { class: "kvtable" }, el("tbody", {}, entries.map(([k, v]) => el("tr", {},
          el("td", { title: k, text: k }),
          el("td", { class: "mono", title: fmtValue(v), text: fmtValue(v) })))))
        : el("p", { class: "muted", text: "none" }));
  }

  function renderState() {
    status.replaceChildren(statusBadge(run.status));
    duration.textContent = fmtDuration(durationMs(run));
    times.textContent = `started ${fmtDateTime(run.started_at)}${run.ended_at ? ` · ended ${fmtDateTime(run.ended_at)}` : ""}` +
      (run.lost_points ? ` · ${run.lost_points} points lost` : "");
    const ranks = run.ranks || [];
    ranksCard.replaceChildren(el("h2", { text: `Ranks (${ranks.length})` }),
      ranks.length
        ? el("table", { class: "plain" },
          el("thead", {}, el("tr", {}, ["rank", "status", "host", "producer", "last seen"].map((h) => el("th", { text: h })))),
          el("tbody", {}, [...ranks].sort((a, b) => a.rank - b.rank).map((r) => el("tr", {},
            el("td", { class: "mono", text: String(r.rank) }),
            el("td", {}, statusBadge(r.status)),
            el("td", { title: r.host || "", text: r.host || "—" }),
            el("td", { class: "mono", title: r.producer_id || "", text: r.producer_id || "—" }),
            el("td", { title: fmtDateTime(r.last_seen_at), text: fmtDateTime(r.last_seen_at).slice(11) || "—" })))))
        : el("p", { class: "muted", text: "no producer has reported ranks" }));
  }

  // -- metrics -----------------------------------------------------------------------------------------

  function splitMetrics(values) {
    singles = {};
    series = [];
    for (const [name, v] of Object.entries(values)) {
      if (Array.isArray(v)) series.push(name); else singles[name] = v;
    }
    series.sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
  }

  function renderSingles() {
    const entries = Object.entries(singles).sort(([a], [b]) => a.localeCompare(b));
    singlesCard.replaceChildren(el("h2", { text: `Single values (${entries.length})` }),
      entries.length
        ? el("table", { class: "kvtable singles" }, el("tbody", {}, entries.map(([k, v]) => el("tr", {},
          el("td", { title: k, text: k }),
          el("td", { class: `mono ${isFiniteNum(v) ? "" : "nonfinite"}`, title: String(v), text: fmtNum(v, 6) })))))
        : el("p", { class: "muted", text: "none" }));
  }

  /** last/min/max and NaN/Inf of a curve from its buckets (min ignores NaN; Inf counts as a max). */
  function stats(buckets) {
    const s = { last: null, min: null, max: null, nan: 0, inf: 0, nanAt: null, infAt: null, steps: 0 };
    for (const b of buckets) {
      if (isFiniteNum(b.min) && (s.min === null || b.min < s.min)) s.min = b.min;
      if (!Number.isNaN(b.max) && (s.max === null || b.max > s.max)) s.max = b.max;
      if (b.nan_count > 0) { s.nan += b.nan_count; if (s.nanAt === null) s.nanAt = b; }
      if (b.inf_count > 0) { s.inf += b.inf_count; if (s.infAt === null) s.infAt = b; }
    }
    if (buckets.length) {
      s.last = buckets[buckets.length - 1].last;
      s.steps = buckets[buckets.length - 1].step_to;
    }
    return s;
  }

  function flagText(s) {
    const at = (b) => (b.step_from === b.step_to ? `@${b.step_from}` : `@${b.step_from}–${b.step_to}`);
    const parts = [];
    if (s.nan) parts.push(`NaN:${s.nan}${at(s.nanAt)}`);
    if (s.inf) parts.push(`Inf:${s.inf}${at(s.infAt)}`);
    return parts.join(" ");
  }

  function sparkCard(metric) {
    const host = el("div", { class: "spark" });
    const statsLine = el("div", { class: "metric-stats" });
    const flag = el("div", { class: "metric-flag" });
    const card = el("div", { class: "metric-card" },
      el("div", { class: "metric-card-head" },
        ellip(metric, { class: "metric-name" }),
        el("a", { href: href(project, "curves", { metric, runs: [id] }), text: "curves →", title: `open ${metric} on the curves page` })),
      statsLine, flag, host);
    return { card, host, statsLine, flag, u: null };
  }

  function sparkData(buckets) {
    const xs = [];
    const avg = [];
    const lo = [];
    const hi = [];
    const bad = [];
    const fin = (v) => (isFiniteNum(v) ? v : null);
    for (const b of buckets) {
      xs.push((b.step_from + b.step_to) / 2);
      avg.push(fin(b.avg));
      lo.push(fin(b.min));
      hi.push(fin(b.max));
      bad.push(b.nan_count > 0 || b.inf_count > 0 ? 0.93 : null);
    }
    return [xs, lo, hi, avg, bad];
  }

  function drawSpark(metric, buckets) {
    let s = sparks.get(metric);
    if (!s) return;
    const st = stats(buckets);
    s.statsLine.replaceChildren(
      ...[["last", st.last], ["min", st.min], ["max", st.max]].map(([k, v]) =>
        el("span", {}, `${k} `, el("b", { class: isFiniteNum(v) || v === null ? "" : "nonfinite", text: fmtNum(v) }))),
      el("span", {}, "steps ", el("b", { text: fmtNum(st.steps) })));
    s.flag.replaceChildren(nanBadge(flagText(st), `${metric}: non-finite values, count@first bucket`) || "");
    const data = sparkData(buckets);
    if (s.u) {
      s.u.setData(data);
      return;
    }
    const width = Math.max(160, s.host.clientWidth);
    s.u = new uPlot({
      width, height: 64,
      legend: { show: false },
      cursor: { show: false },
      select: { show: false },
      axes: [{ show: false }, { show: false }],
      scales: { x: { time: false }, flag: { auto: false, range: [0, 1] } },
      series: [
        {},
        { stroke: "transparent", width: 0, points: { show: false } },
        { stroke: "transparent", width: 0, points: { show: false } },
        { stroke: LINE, width: 1.25, points: { show: false } },
        { scale: "flag", paths: () => null, points: { show: true, size: 5, stroke: RED, fill: RED } },
      ],
      bands: [{ series: [2, 1], fill: "rgba(37, 99, 235, 0.12)" }],
      padding: [4, 2, 2, 2],
    }, data, s.host);
  }

  async function loadSparks(names) {
    await mapLimit(names, 4, async (metric) => {
      const curves = await api("curves", { project, runs: [id], entity_type, metric, points: SPARK_POINTS });
      if (ctx.alive()) drawSpark(metric, curves[id] || []);
    });
  }

  function renderSeries() {
    for (const metric of series) {
      if (sparks.has(metric)) continue;
      const s = sparkCard(metric);
      sparks.set(metric, s);
      seriesGrid.append(s.card);
    }
    if (!series.length) seriesGrid.replaceChildren(el("p", { class: "muted", text: `This ${noun()} has logged no series.` }));
  }

  splitMetrics(metricValues);
  renderState();
  renderSingles();
  renderSeries();
  loadSparks(series).catch(ctx.fail);

  // -- live ----------------------------------------------------------------------------------------------
  const events = openEvents({ project, entity_type, runs: [id] }, {
    runs: ({ runs }) => {
      const mine = runs.find((r) => r.id === id);
      if (!mine) return;
      const ended = run.status === "running" && mine.status !== "running";
      Object.assign(run, mine);
      renderState();
      if (ended) loadSparks(series).catch(ctx.fail); // the final points
    },
    alerts: ctx.alerts,
    problem: ({ message }) => ctx.problem(message),
  }, ctx.live);
  disposers.push(() => events.close());

  let lastMetrics = Date.now();
  const timer = setInterval(async () => {
    if (run.status !== "running") return;
    try {
      if (Date.now() - lastMetrics >= METRICS_REFRESH_MS) {
        lastMetrics = Date.now();
        const values = await api("entity_metrics", { entity: { project, type: entity_type, id } });
        if (!ctx.alive()) return;
        splitMetrics(values);
        renderSingles();
        renderSeries();
      }
      await loadSparks(series);
    } catch (err) {
      ctx.fail(err);
    }
  }, SPARKS_REFRESH_MS);
  disposers.push(() => clearInterval(timer));

  const ticker = setInterval(() => { duration.textContent = fmtDuration(durationMs(run)); }, 1000);
  disposers.push(() => clearInterval(ticker));

  const resize = new ResizeObserver(() => {
    for (const s of sparks.values()) if (s.u) s.u.setSize({ width: Math.max(160, s.host.clientWidth), height: 64 });
  });
  resize.observe(seriesGrid);
  disposers.push(() => resize.disconnect());
  disposers.push(() => { for (const s of sparks.values()) if (s.u) s.u.destroy(); });

  return () => disposers.forEach((d) => d());
}
