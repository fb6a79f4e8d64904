// The runs table of a project (#/p/<project>): Tabulator, virtual rendering, live statuses.
import { api, openEvents } from "./api.js";
import {
  el, field, select, href, fmtNum, fmtDuration, durationMs, fmtDateTime, isFiniteNum, statusBadge,
  nanFlagText, STATUSES, multiSelect, pref, setPref, metricNames, seriesMetricNames, fmtValue, noun,
} from "./util.js";

const REFRESH_MS = 5000; // re-fetch of metric summaries while a run runs
const CURVES_DEFAULT_RUNS = 10;

export async function mount(root, ctx) {
  const { project } = ctx;
  const entity_type = ctx.type;
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) }, { text: noun(true, true) }]);
  root.append(el("div", { class: "loading", text: `Loading ${noun(true)}…` }));

  // The other kind's tab shows when the project holds any (a models-only project opens on its models).
  const other = entity_type === "run" ? "model" : "run";
  let [rows, otherProjects] = await Promise.all([
    api("runs", { project, entity_type }), api("projects", { entity_type: other }).catch(() => [])]);
  if (!ctx.alive()) return null;

  const disposers = [];
  let table = null;
  let tableReady = false;
  let paramKeys = [];
  let constantParams = {};
  let allMetrics = metricNames(rows);
  const storedMetrics = pref(`runs.metrics.${project}`, null);
  let metrics = (storedMetrics || []).filter((m) => allMetrics.includes(m));
  if (!metrics.length && allMetrics.length) metrics = [allMetrics[0]];
  const statusOf = new Map(rows.map((r) => [r.id, r.status]));

  // -- toolbar ---------------------------------------------------------------------------------------
  const search = el("input", { type: "search", placeholder: "name, id, params, tags…", class: "search" });
  const statusFilter = select([["", "any"], ...STATUSES.map((s) => [s, s]), ["failed,crashed", "failed or crashed"]],
    "", () => applyFilters());
  const metricPicker = multiSelect({
    label: "Metrics", options: allMetrics, selected: metrics, empty: "none",
    onChange: (chosen) => {
      metrics = chosen;
      setPref(`runs.metrics.${project}`, metrics);
      rebuildColumns();
    },
  });
  const count = el("span", { class: "muted count" });
  const curvesButton = el("button", { type: "button", class: "btn btn-primary", text: `Curves of selected ${noun(true)}` });
  const kinds = el("div", { class: "seg kinds", role: "tablist" },
    ["run", "model"].filter((k) => k === entity_type || otherProjects.includes(project)).map((k) =>
      el("a", { href: href(project, "", { type: k }), role: "tab", class: k === entity_type ? "kind kind-on" : "kind",
        "aria-selected": String(k === entity_type), text: k === "run" ? "Runs" : "Models" })));
  const compareButton = el("button", { type: "button", class: "btn", text: "Compare" });
  const constants = el("div", { class: "constants muted" });
  const tableHost = el("div", { class: "table-host" });

  root.replaceChildren(
    el("div", { class: "toolbar" },
      kinds.children.length > 1 ? kinds : null,
      field("Search", search),
      field("Status", statusFilter),
      metricPicker,
      el("span", { class: "spacer" }),
      count,
      curvesButton,
      compareButton),
    constants,
    tableHost);

  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(applyFilters, 200);
  });

  curvesButton.addEventListener("click", () => {
    const metric = metrics.find((m) => seriesMetricNames(rows).includes(m)) || seriesMetricNames(rows)[0] || metrics[0];
    let ids = table.getSelectedData().map((r) => r.id);
    if (!ids.length) ids = table.getData("active").slice(0, CURVES_DEFAULT_RUNS).map((r) => r.id);
    location.hash = href(project, "curves", { metric, runs: ids });
  });
  compareButton.addEventListener("click", () => {
    const metric = metrics[0] || allMetrics[0];
    const ids = table.getSelectedData().map((r) => r.id);
    location.hash = href(project, "compare", { metric, runs: ids.length > 1 ? ids : [] });
  });

  // -- rows and columns ---------------------------------------------------------------------------------

  function computeParams() {
    const values = new Map();
    for (const r of rows) {
      for (const [k, v] of Object.entries(r.params || {})) {
        if (!values.has(k)) values.set(k, new Set());
        values.get(k).add(JSON.stringify(v));
      }
    }
    const keys = [...values.keys()].sort();
    // A param differs when it has two values, or some runs lack it.
    paramKeys = keys.filter((k) => values.get(k).size > 1 || rows.some((r) => !r.params || !(k in r.params)));
    constantParams = {};
    for (const k of keys) if (!paramKeys.includes(k)) constantParams[k] = rows[0].params[k];
    const entries = Object.entries(constantParams);
    constants.replaceChildren(...(entries.length
      ? [el("span", { text: "Same in every run: " }),
        ...entries.map(([k, v]) => el("span", { class: "kv", text: `${k}=${fmtValue(v)}`, title: `${k}=${fmtValue(v)}` }))]
      : []));
    constants.hidden = !entries.length;
  }

  function tagsText(tags) {
    return Object.entries(tags || {}).map(([k, v]) => (v === "" ? k : `${k}=${v}`)).join(" ");
  }

  /** A runs row as the table's flat record (fields p_<i> and m_<i>_<stat>: param and metric names may hold dots). */
  function flatten(r) {
    const rec = {
      id: r.id, name: r.name || r.id, status: r.status, started_at: r.started_at, ended_at: r.ended_at,
      tags: tagsText(r.tags), ranks: r.ranks, lost_points: r.lost_points,
    };
    rec._search = [r.name, r.id, rec.tags,
      ...Object.entries(r.params || {}).map(([k, v]) => `${k}=${fmtValue(v)}`)].join(" ").toLowerCase();
    paramKeys.forEach((k, i) => {
      const v = r.params ? r.params[k] : undefined;
      rec[`p_${i}`] = v === undefined ? null : typeof v === "object" && v !== null ? JSON.stringify(v) : v;
    });
    metrics.forEach((m, i) => {
      const s = (r.metrics || {})[m];
      rec[`m_${i}_last`] = s ? s.last : null;
      rec[`m_${i}_min`] = s ? s.min : null;
      rec[`m_${i}_max`] = s ? s.max : null;
      rec[`m_${i}_bad`] = s ? (s.nan_count || 0) + (s.inf_count || 0) : 0;
      rec[`m_${i}_flag`] = nanFlagText(s);
    });
    return rec;
  }

  // Empty, NaN and missing values sort last whatever the direction.
  function numberSorter(a, b, aRow, bRow, column, dir) {
    const ea = a === null || a === undefined || Number.isNaN(a);
    const eb = b === null || b === undefined || Number.isNaN(b);
    if (ea || eb) return ea && eb ? 0 : (ea ? 1 : -1) * (dir === "asc" ? 1 : -1);
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function mixedSorter(a, b, aRow, bRow, column, dir) {
    if (typeof a === "number" && typeof b === "number") return numberSorter(a, b, aRow, bRow, column, dir);
    const ea = a === null || a === undefined;
    const eb = b === null || b === undefined;
    if (ea || eb) return ea && eb ? 0 : (ea ? 1 : -1) * (dir === "asc" ? 1 : -1);
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  // ISO 8601 UTC times order as strings: a plain comparison (localeCompare is slow over 10,000 rows).
  function timeSorter(a, b, aRow, bRow, column, dir) {
    const ea = !a;
    const eb = !b;
    if (ea || eb) return ea && eb ? 0 : (ea ? 1 : -1) * (dir === "asc" ? 1 : -1);
    return a < b ? -1 : a > b ? 1 : 0;
  }

  /** "MM-DD HH:MM" this year, "YYYY-MM-DD" before. */
  function shortDate(iso) {
    const full = fmtDateTime(iso);
    if (full === "—") return full;
    return full.startsWith(String(new Date().getFullYear())) ? full.slice(5, 16) : full.slice(0, 10);
  }

  function numberCell(cell) {
    const v = cell.getValue();
    const node = el("span", { text: fmtNum(v, 4), class: isFiniteNum(v) || v === null ? "" : "nonfinite" });
    if (v !== null && v !== undefined) node.title = String(v);
    return node;
  }

  // Widths set from the header and a sample of values, not measured: measuring 10,000 rows' cells on every
  // build ("fitData") is most of the table's first paint.
  function paramWidth(key) {
    let chars = key.length + 2; // the sort arrow
    for (const r of rows.slice(0, 500)) {
      const v = r.params ? r.params[key] : undefined;
      if (v !== undefined) chars = Math.max(chars, fmtValue(v).length);
    }
    return Math.round(Math.min(180, Math.max(56, chars * 7.5 + 22)));
  }

  /** A header filter (substring, case-insensitive) with an accessible name. */
  function textFilter(what) {
    return {
      headerFilter: "input", headerFilterPlaceholder: "filter", headerFilterFunc: "like",
      headerFilterParams: { elementAttributes: { "aria-label": `filter ${what}`, title: `filter ${what} (contains)` } },
    };
  }

  function columns() {
    const cols = [
      {
        title: "Name", field: "name", frozen: true, width: 176, ...textFilter("name"),
        formatter: (cell) => {
          const r = cell.getData();
          const a = el("a", { href: href(project, `run/${r.id}`), class: "ellip", text: r.name, title: r.name });
          a.addEventListener("click", (e) => e.stopPropagation()); // following the link is not a row selection
          return a;
        },
      },
      { title: "ID", field: "id", width: 84, ...textFilter("id"), tooltip: true },
      {
        title: "Status", field: "status", width: 96,
        formatter: (cell) => {
          const alerts = ctx.firing(cell.getData().id);
          if (!alerts.length) return statusBadge(cell.getValue());
          return el("span", { class: "status-cell" }, statusBadge(cell.getValue()),
            el("span", { class: "badge status-failed run-alert", text: "!",
              title: `alert firing: ${alerts.map((a) => `${a.when} on ${a.metric}`).join(", ")}` }));
        },
      },
      {
        title: "Started", field: "started_at", width: 96, sorter: timeSorter,
        formatter: (cell) => el("span", { text: shortDate(cell.getValue()), title: fmtDateTime(cell.getValue()) }),
      },
      {
        title: "Duration", field: "_duration", width: 90, hozAlign: "right",
        sorter: (a, b, aRow, bRow, c, dir) => numberSorter(durationMs(aRow.getData()), durationMs(bRow.getData()), aRow, bRow, c, dir),
        formatter: (cell) => {
          const r = cell.getData();
          const live = r.status === "running" && !r.ended_at;
          return el("span", { class: live ? "dur-live" : "", dataset: { start: r.started_at || "" },
            title: `started ${fmtDateTime(r.started_at)}${r.ended_at ? `, ended ${fmtDateTime(r.ended_at)}` : ""}`,
            text: fmtDuration(durationMs(r)) });
        },
      },
      ...paramKeys.map((k, i) => ({
        title: k, field: `p_${i}`, width: paramWidth(k), hozAlign: "right", ...textFilter(`param ${k}`),
        sorter: mixedSorter, headerTooltip: `param ${k}`,
        formatter: (cell) => el("span", { text: fmtValue(cell.getValue()), title: fmtValue(cell.getValue()) }),
      })),
      {
        title: "Tags", field: "tags", width: 110, ...textFilter("tags"),
        formatter: (cell) => el("span", { class: "tags", text: cell.getValue(), title: cell.getValue() }),
      },
      ...metrics.map((m, i) => ({
        title: m, headerTooltip: `metric ${m}`,
        columns: [
          ...["last", "min", "max"].map((stat) => ({
            title: stat, field: `m_${i}_${stat}`, width: 78, hozAlign: "right", sorter: numberSorter,
            headerFilter: false, formatter: numberCell,
          })),
          {
            title: "NaN/Inf", field: `m_${i}_bad`, width: 96, sorter: "number", headerTooltip: `non-finite values of ${m}: count@first step`,
            formatter: (cell) => {
              const text = cell.getData()[`m_${i}_flag`];
              return text ? el("span", { class: "badge nanflag", text, title: `${m}: ${text} (count@first step)` }) : "";
            },
          },
        ],
      })),
    ];
    return cols;
  }

  function applyFilters() {
    if (!tableReady) return;
    const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const statuses = statusFilter.value ? statusFilter.value.split(",") : null;
    if (!words.length && !statuses) {
      table.clearFilter(false);
      return;
    }
    table.setFilter((data) => (!statuses || statuses.includes(data.status)) && words.every((w) => data._search.includes(w)));
  }

  function updateCount() {
    if (!tableReady) return;
    const shown = table.getDataCount("active");
    const selected = table.getSelectedRows().length;
    count.textContent = `${shown === rows.length ? rows.length : `${shown} of ${rows.length}`} ${noun(true)}` +
      (selected ? ` · ${selected} selected` : "");
    curvesButton.title = selected ? `Curves of the ${selected} selected ${noun(true)}`
      : `Curves of the first ${Math.min(CURVES_DEFAULT_RUNS, shown)} ${noun(true)} shown (select some to choose)`;
    compareButton.title = selected > 1 ? `Compare the ${selected} selected ${noun(true)}` : `Compare every ${noun()} of the project`;
  }

  function rebuildColumns() {
    const sorters = table.getSorters().map((s) => ({ column: s.field, dir: s.dir }));
    table.setColumns(columns());
    const records = rows.map(flatten);
    table.updateOrAddData(records);
    for (const rec of records) shown.set(rec.id, rec);
    const fields = new Set(table.getColumns(true).flatMap(flat).map((c) => c.getField()));
    table.setSort(sorters.filter((s) => fields.has(s.column)));
  }

  function flat(col) {
    const sub = col.getSubColumns ? col.getSubColumns() : [];
    return sub.length ? sub.flatMap(flat) : [col];
  }

  computeParams();
  const initial = rows.map(flatten);
  const shown = new Map(initial.map((rec) => [rec.id, rec])); // rows as last given to the table (see push)
  table = new Tabulator(tableHost, {
    data: initial,
    index: "id",
    height: "100%",
    layout: "fitColumns",
    renderVertical: "virtual",
    columns: columns(),
    rowHeader: {
      formatter: "rowSelection", titleFormatter: "rowSelection", titleFormatterParams: { rowRange: "active" },
      headerSort: false, resizable: false, frozen: true, width: 34, hozAlign: "center", headerHozAlign: "center",
    },
    selectableRows: true,
    columnDefaults: { headerTooltip: true, resizable: true },
    initialSort: [{ column: "started_at", dir: "desc" }],
    placeholder: `No ${noun(true)} match`,
    headerFilterLiveFilterDelay: 200,
  });
  // The selection survives a trip to another page and back (this tab only).
  const selectionKey = `trackstream.selected.${project}`;
  table.on("tableBuilt", () => {
    tableReady = true;
    try {
      const kept = JSON.parse(sessionStorage.getItem(selectionKey) || "[]").filter((id) => statusOf.has(id));
      if (kept.length) table.selectRow(kept);
    } catch {
      /* nothing kept */
    }
    updateCount();
  });
  table.on("dataFiltered", () => setTimeout(updateCount));
  table.on("rowSelectionChanged", (data) => {
    if (tableReady) {
      try { sessionStorage.setItem(selectionKey, JSON.stringify(data.map((r) => r.id))); } catch { /* private mode */ }
    }
    updateCount();
  });
  disposers.push(() => table.destroy());

  // -- live -----------------------------------------------------------------------------------------------

  // Rows as last given to the table: only the rows that differ are handed to it again (at 10,000 rows,
  // re-feeding all of them every few seconds would freeze the page).
  const byId = new Map(rows.map((r) => [r.id, r]));

  function differs(old, rec) {
    return Object.keys(rec).some((k) => (k === "ranks" ? JSON.stringify(old.ranks) !== JSON.stringify(rec.ranks) : old[k] !== rec[k]));
  }

  function push(records) {
    const changedRecords = records.filter((rec) => !shown.has(rec.id) || differs(shown.get(rec.id), rec));
    if (!changedRecords.length) return;
    for (const rec of changedRecords) shown.set(rec.id, rec);
    table.updateOrAddData(changedRecords);
  }

  let fetching = false;
  /** Re-reads the runs: every run (`full`), else only the running ones (their summaries move). */
  async function refetch(full) {
    if (fetching || !ctx.alive()) return;
    fetching = true;
    try {
      const fresh = await api("runs", full ? { project, entity_type } : { project, entity_type, status: "running" });
      if (!ctx.alive()) return;
      if (full) {
        const known = new Set(fresh.map((r) => r.id));
        const gone = rows.filter((r) => !known.has(r.id)).map((r) => r.id);
        if (gone.length) {
          table.deleteRow(gone);
          for (const id of gone) { shown.delete(id); byId.delete(id); statusOf.delete(id); }
        }
      }
      for (const r of fresh) {
        statusOf.set(r.id, r.status);
        byId.set(r.id, r);
      }
      rows = [...byId.values()];
      const oldSignature = JSON.stringify([paramKeys, allMetrics]);
      computeParams();
      allMetrics = metricNames(rows);
      if (JSON.stringify([paramKeys, allMetrics]) !== oldSignature) {
        metricPicker.setOptions(allMetrics, metrics.filter((m) => allMetrics.includes(m)));
        metrics = metricPicker.selected();
        if (!metrics.length && allMetrics.length) metrics = [allMetrics[0]];
        rebuildColumns();
      } else {
        push(fresh.map(flatten));
      }
      updateCount();
    } catch (err) {
      ctx.fail(err);
    } finally {
      fetching = false;
    }
  }

  function changed(row, r) {
    return ["status", "name", "started_at", "ended_at", "lost_points"].some((k) => row[k] !== r[k]) ||
      JSON.stringify(row.tags) !== JSON.stringify(r.tags) || JSON.stringify(row.ranks) !== JSON.stringify(r.ranks);
  }

  const events = openEvents({ project, entity_type }, {
    runs: ({ runs }) => {
      if (!tableReady) return;
      let unknown = false;
      let ended = false;
      const updates = [];
      for (const r of runs) {
        const row = byId.get(r.id);
        if (!row) {
          unknown = true;
          continue;
        }
        if (!changed(row, r)) continue; // the first event lists every run
        if (row.status === "running" && r.status !== "running") ended = true;
        Object.assign(row, r); // params and metrics are not in the event: kept
        statusOf.set(r.id, r.status);
        updates.push(flatten(row));
      }
      if (updates.length) push(updates);
      if (unknown || ended) refetch(true); // a new run, or final summaries
    },
    alerts: (data) => {
      ctx.alerts(data);
      if (!tableReady) return;
      const touched = [...new Set(data.alerts.map((a) => a.run))].filter((id) => byId.has(id));
      if (touched.length) push(touched.map((id) => flatten(byId.get(id)))); // the Status cell's alert mark
    },
    problem: ({ message }) => ctx.problem(message),
  }, ctx.live);
  disposers.push(() => events.close());

  const refresher = setInterval(() => {
    for (const st of statusOf.values()) {
      if (st === "running") {
        refetch(false);
        break;
      }
    }
  }, REFRESH_MS);
  disposers.push(() => clearInterval(refresher));

  // Running durations tick once a second (only the rendered cells).
  const ticker = setInterval(() => {
    for (const node of tableHost.querySelectorAll(".dur-live")) {
      const start = Date.parse(node.dataset.start);
      if (!Number.isNaN(start)) node.textContent = fmtDuration(Date.now() - start);
    }
  }, 1000);
  disposers.push(() => clearInterval(ticker));

  return () => disposers.forEach((d) => d());
}
