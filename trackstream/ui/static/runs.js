// The runs table of a project (#/p/<project>): Tabulator, virtual rendering, live statuses. Search, filters and
// sorting run on the server (POST /api/v1/runs_table, sinks/runs_table.py), which sends a page of rows at a time
// as the table scrolls: a project of 10,000 runs costs the page the rows it shows.
import { api, openEvents } from "./api.js";
import {
  el, field, select, href, fmtNum, fmtDuration, durationMs, fmtDateTime, isFiniteNum, statusBadge,
  nanFlagText, STATUSES, multiSelect, pref, setPref, fmtValue, noun, orderMetrics, escapeHtml,
} from "./util.js";

export const PAGE_SIZE = 200; // rows per request (boot.js asks for the first page with the same body)
export const FIRST_SORT = [{ field: "started_at", dir: "desc" }];
const REFRESH_MS = 5000; // re-read of the loaded running rows' metric summaries
const CURVES_DEFAULT_RUNS = 10;

/** The body of a runs_table request; boot.js builds the first page's the same way. */
export function pageBody(project, entity_type,
  { search = "", status = null, filters = [], sort = FIRST_SORT, page = 1, listing = null } = {}) {
  const body = { project, entity_type, page, size: PAGE_SIZE, sort };
  if (search) body.search = search;
  if (status) body.status = status;
  if (filters.length) body.filters = filters;
  if (listing && page > 1) body.listing = listing; // the same read as page 1
  return body;
}

export async function mount(root, ctx) {
  const { project } = ctx;
  const entity_type = ctx.type;
  ctx.crumbs([{ text: "Projects", href: "#/" }, { text: project, href: href(project) }, { text: noun(true, true) }]);
  root.append(el("div", { class: "loading", text: `Loading ${noun(true)}…` }));

  // The other kind's tab shows when the project holds any (a models-only project opens on its models).
  const other = entity_type === "run" ? "model" : "run";
  let [first, otherProjects] = await Promise.all([
    api("runs_table", pageBody(project, entity_type)), api("projects", { entity_type: other }).catch(() => [])]);
  if (!ctx.alive()) return null;

  const disposers = [];
  let table = null;
  let tableReady = false;
  let paramKeys = first.params.differ;
  let allMetrics = orderMetrics(first.metrics);
  let seriesMetrics = orderMetrics(first.series);
  let sampleRows = first.data; // for the param columns' widths
  const storedMetrics = pref(`runs.metrics.${project}`, null);
  let metrics = (storedMetrics || []).filter((m) => allMetrics.includes(m));
  if (!metrics.length && allMetrics.length) metrics = [allMetrics[0]];
  const loaded = new Map(); // id -> runs() row, for the rows the table holds or is about to
  let inTable = new Set(); // the ids the table holds (updates go to these only)
  let fresh = 0; // runs started since the table was read
  let generation = 0; // page-1 reads so far: an answer to an older one is dropped
  let listing = null; // page 1's read, which the next pages reuse
  let readingFirst = false;
  let reloadWanted = false;

  // -- toolbar ---------------------------------------------------------------------------------------
  const search = el("input", { type: "search", placeholder: "name, id, params, tags…", class: "search" });
  const statusFilter = select([["", "any"], ...STATUSES.map((s) => [s, s]), ["failed,crashed", "failed or crashed"]],
    "", () => reload());
  const metricPicker = multiSelect({
    label: "Metrics", options: allMetrics, selected: metrics, empty: "none",
    onChange: (chosen) => {
      metrics = chosen;
      setPref(`runs.metrics.${project}`, metrics);
      rebuildColumns();
    },
  });
  const count = el("span", { class: "muted count" });
  const clearButton = el("button", { type: "button", class: "btn-link", text: "clear", hidden: true,
    title: "Deselect every run, also those the search hides", on: { click: () => {
      chosen.clear();
      table.deselectRow();
      keepSelection();
    } } });
  const newButton = el("button", { type: "button", class: "btn-link new-runs", hidden: true, on: { click: () => reload() } });
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
      newButton,
      count,
      clearButton,
      curvesButton,
      compareButton),
    constants,
    tableHost);

  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(reload, 200);
  });

  curvesButton.addEventListener("click", () => {
    const metric = metrics.find((m) => seriesMetrics.includes(m)) || seriesMetrics[0] || metrics[0];
    let ids = [...chosen];
    if (!ids.length) ids = table.getData().slice(0, CURVES_DEFAULT_RUNS).map((r) => r.id);
    location.hash = href(project, "curves", { metric, runs: ids });
  });
  compareButton.addEventListener("click", () => {
    const metric = metrics[0] || allMetrics[0];
    const ids = [...chosen];
    location.hash = href(project, "compare", { metric, runs: ids.length > 1 ? ids : [] });
  });

  // -- rows and columns ---------------------------------------------------------------------------------

  function showConstants(same) {
    const entries = Object.entries(same);
    constants.replaceChildren(...(entries.length
      ? [el("span", { text: `Same in every ${noun()}: ` }),
        ...entries.map(([k, v]) => el("span", { class: "kv", text: `${k}=${fmtValue(v)}`, title: `${k}=${fmtValue(v)}` }))]
      : []));
    constants.hidden = !entries.length;
  }

  function tagsText(tags) {
    return Object.entries(tags || {}).map(([k, v]) => (v === "" ? k : `${k}=${v}`)).join(" ");
  }

  /**
   * A runs row as the table's flat record. Its fields are the server's names (sinks/runs_table.py):
   * `param:<key>`, `metric:<name>:<last|min|max|bad>` (the table splits no field on dots), so a filter or sort
   * keeps to its column when columns come and go.
   */
  function flatten(r) {
    const rec = {
      id: r.id, name: r.name || r.id, status: r.status, started_at: r.started_at, ended_at: r.ended_at,
      tags: tagsText(r.tags), ranks: r.ranks, lost_points: r.lost_points,
    };
    for (const k of paramKeys) {
      const v = r.params ? r.params[k] : undefined;
      rec[`param:${k}`] = v === undefined ? null : typeof v === "object" && v !== null ? JSON.stringify(v) : v;
    }
    for (const m of metrics) {
      const s = (r.metrics || {})[m];
      rec[`metric:${m}:last`] = s ? s.last : null;
      rec[`metric:${m}:min`] = s ? s.min : null;
      rec[`metric:${m}:max`] = s ? s.max : null;
      rec[`metric:${m}:bad`] = s ? (s.nan_count || 0) + (s.inf_count || 0) : 0;
      rec[`flag:${m}`] = nanFlagText(s);
    }
    return rec;
  }

  /** The server's name of a column's field. */
  function serverField(f) {
    return f === "_duration" ? "duration" : f;
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

  /** A header filter (substring, case-insensitive, applied by the server) with an accessible name. */
  function textFilter(what) {
    return {
      headerFilter: "input", headerFilterPlaceholder: "filter",
      headerFilterParams: { elementAttributes: { "aria-label": `filter ${what}`, title: `filter ${what} (contains)` } },
    };
  }

  // Widths set from the header and the first page's values, not measured: measuring cells on every build
  // ("fitData") is most of a table's first paint.
  function paramWidth(key) {
    let chars = key.length + 2; // the sort arrow
    for (const r of sampleRows) {
      const v = r.params ? r.params[key] : undefined;
      if (v !== undefined) chars = Math.max(chars, fmtValue(v).length);
    }
    return Math.round(Math.min(180, Math.max(56, chars * 7.5 + 22)));
  }

  function columns() {
    return [
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
        title: "Status", field: "status", width: 118, // a firing alert's mark beside the badge
        formatter: (cell) => {
          const alerts = ctx.firing(cell.getData().id);
          if (!alerts.length) return statusBadge(cell.getValue());
          return el("span", { class: "status-cell" }, statusBadge(cell.getValue()),
            el("span", { class: "badge status-failed run-alert", text: "!",
              title: `alert firing: ${alerts.map((a) => `${a.when} on ${a.metric}`).join(", ")}` }));
        },
      },
      {
        title: "Started", field: "started_at", width: 96,
        formatter: (cell) => el("span", { text: shortDate(cell.getValue()), title: fmtDateTime(cell.getValue()) }),
      },
      {
        title: "Duration", field: "_duration", width: 90, hozAlign: "right",
        formatter: (cell) => {
          const r = cell.getData();
          const live = r.status === "running" && !r.ended_at;
          return el("span", { class: live ? "dur-live" : "", dataset: { start: r.started_at || "" },
            title: `started ${fmtDateTime(r.started_at)}${r.ended_at ? `, ended ${fmtDateTime(r.ended_at)}` : ""}`,
            text: fmtDuration(durationMs(r)) });
        },
      },
      ...paramKeys.map((k) => ({
        title: escapeHtml(k), field: `param:${k}`, width: paramWidth(k), hozAlign: "right", ...textFilter(`param ${k}`),
        headerTooltip: `param ${k}`,
        formatter: (cell) => el("span", { text: fmtValue(cell.getValue()), title: fmtValue(cell.getValue()) }),
      })),
      {
        title: "Tags", field: "tags", width: 110, ...textFilter("tags"),
        formatter: (cell) => el("span", { class: "tags", text: cell.getValue(), title: cell.getValue() }),
      },
      ...metrics.map((m) => ({
        title: escapeHtml(m), headerTooltip: `metric ${m}`,
        columns: [
          ...["last", "min", "max"].map((stat) => ({
            title: stat, field: `metric:${m}:${stat}`, width: 78, hozAlign: "right", headerFilter: false, formatter: numberCell,
          })),
          {
            title: "NaN/Inf", field: `metric:${m}:bad`, width: 150, headerTooltip: `non-finite values of ${m}: count@first step`,
            formatter: (cell) => {
              const text = cell.getData()[`flag:${m}`];
              return text ? el("span", { class: "badge nanflag", text, title: `${m}: ${text} (count@first step)` }) : "";
            },
          },
        ],
      })),
    ];
  }

  let lastCounts = { shown: first.last_row, total: first.total };
  const readAt = first.read_at;

  function updateCount() {
    if (!tableReady) return;
    const { shown, total } = lastCounts;
    const selected = chosen.size;
    count.textContent = `${shown === total ? total : `${shown} of ${total}`} ${noun(true)}` +
      (selected ? ` · ${selected} selected` : "");
    curvesButton.title = selected ? `Curves of the ${selected} selected ${noun(true)}`
      : `Curves of the first ${Math.min(CURVES_DEFAULT_RUNS, shown)} ${noun(true)} shown (select some to choose)`;
    compareButton.title = selected > 1 ? `Compare the ${selected} selected ${noun(true)}` : `Compare every ${noun()} of the project`;
    clearButton.hidden = !selected;
    newButton.hidden = !fresh;
    newButton.textContent = `${fresh} new ${fresh === 1 ? noun() : noun(true)}: show`;
  }

  /** The table's data source: a page of the server's answer (the first one is already here). */
  async function requestPage(url, config, params) {
    const body = pageBody(project, entity_type, {
      search: search.value.trim(),
      status: statusFilter.value ? statusFilter.value.split(",") : null,
      filters: (params.filter || []).filter((f) => f.value !== "" && f.value !== undefined)
        .map((f) => ({ field: serverField(f.field), value: String(f.value) })),
      sort: (params.sort || []).length ? params.sort.map((s) => ({ field: serverField(s.field), dir: s.dir })) : FIRST_SORT,
      page: params.page || 1,
      listing,
    });
    const mine = body.page === 1 ? ++generation : generation;
    if (body.page === 1) {
      readingFirst = true;
      fresh = 0;
    }
    let answer;
    try {
      if (first && JSON.stringify(body) === JSON.stringify(pageBody(project, entity_type))) {
        answer = first;
      } else {
        answer = await api("runs_table", body);
      }
    } finally {
      if (body.page === 1 && mine === generation) readingFirst = false;
    }
    first = null;
    // A newer search, sort or reload was asked meanwhile: this answer must not reach the table (Tabulator's
    // progressive loading applies what it gets), so its promise never settles.
    if (mine !== generation) return new Promise(() => {});
    if (body.page === 1) {
      listing = answer.listing;
      sampleRows = answer.data;
      for (const id of loaded.keys()) loaded.delete(id);
      adoptColumns(answer);
      if (reloadWanted) {
        reloadWanted = false;
        setTimeout(reload);
      }
    }
    for (const r of answer.data) loaded.set(r.id, r);
    lastCounts = { shown: answer.last_row, total: answer.total };
    setTimeout(updateCount);
    return { last_page: answer.last_page, last_row: answer.last_row, data: answer.data.map(flatten) };
  }

  /** New params or metrics in the project (a run with new keys): the columns follow, then the rows again. */
  function adoptColumns(answer) {
    showConstants(answer.params.same);
    seriesMetrics = orderMetrics(answer.series);
    const before = JSON.stringify([paramKeys, allMetrics]);
    if (JSON.stringify([answer.params.differ, orderMetrics(answer.metrics)]) === before) return;
    paramKeys = answer.params.differ;
    allMetrics = orderMetrics(answer.metrics);
    metricPicker.setOptions(allMetrics, metrics.filter((m) => allMetrics.includes(m)));
    metrics = metricPicker.selected();
    if (!metrics.length && allMetrics.length) metrics = [allMetrics[0]];
    if (tableReady) setTimeout(rebuildColumns);
  }

  /** New columns; the header filters and sorts of the columns that stay are kept (the others are dropped). */
  function rebuildColumns() {
    const filters = table.getHeaderFilters().map((f) => [f.field, f.value]);
    const sorters = table.getSorters().map((s) => ({ column: s.field, dir: s.dir }));
    table.clearHeaderFilter();
    table.setColumns(columns());
    const fields = new Set(table.getColumns(true).flatMap(function flat(c) {
      const sub = c.getSubColumns ? c.getSubColumns() : [];
      return sub.length ? sub.flatMap(flat) : [c.getField()];
    }));
    for (const [f, v] of filters) if (fields.has(f)) table.setHeaderFilterValue(f, v);
    const kept = sorters.filter((s) => fields.has(s.column));
    table.setSort(kept.length ? kept : FIRST_SORT.map((s) => ({ column: s.field, dir: s.dir })));
  }

  function reload() {
    if (!tableReady) return;
    if (readingFirst) {
      reloadWanted = true; // once the read in flight is in
      return;
    }
    table.setData();
  }

  const selectionKey = `trackstream.selected.${project}`;
  const chosen = new Set((() => {
    try { return JSON.parse(sessionStorage.getItem(selectionKey) || "[]"); } catch { return []; }
  })());

  function keepSelection() {
    try { sessionStorage.setItem(selectionKey, JSON.stringify([...chosen])); } catch { /* private mode */ }
    updateCount();
  }

  showConstants(first.params.same);
  table = new Tabulator(tableHost, {
    ajaxURL: "runs_table", // the request is requestPage's
    ajaxRequestFunc: requestPage,
    progressiveLoad: "scroll",
    paginationSize: PAGE_SIZE,
    sortMode: "remote",
    filterMode: "remote",
    index: "id",
    height: "100%",
    layout: "fitColumns",
    renderVertical: "virtual",
    nestedFieldSeparator: false, // field names hold dots (params, metrics)
    columns: columns(),
    rowHeader: {
      formatter: "rowSelection", titleFormatter: "rowSelection", titleFormatterParams: { rowRange: "active" },
      headerSort: false, resizable: false, frozen: true, width: 34, hozAlign: "center", headerHozAlign: "center",
    },
    selectableRows: true,
    columnDefaults: { headerTooltip: true, resizable: true },
    initialSort: FIRST_SORT.map((s) => ({ column: s.field, dir: s.dir })),
    placeholder: `No ${noun(true)} match`,
    headerFilterLiveFilterDelay: 300,
  });
  table.on("tableBuilt", () => {
    tableReady = true;
    updateCount();
  });
  // The selection is the user's, not the loaded rows': it survives searches, sorts and pages (rows leaving the
  // table are not deselected) and a trip to another page and back (this tab only).
  table.on("dataProcessed", () => {
    inTable = new Set(table.getData().map((r) => r.id));
    const again = [...chosen].filter((id) => inTable.has(id));
    if (again.length) table.selectRow(again);
    updateCount();
  });
  table.on("rowSelected", (row) => {
    chosen.add(row.getData().id);
    keepSelection();
  });
  table.on("rowDeselected", (row) => { // a user's click: new data replaces rows without deselecting them
    chosen.delete(row.getData().id);
    keepSelection();
  });
  disposers.push(() => table.destroy());

  // -- live -----------------------------------------------------------------------------------------------

  /** Rows the table holds that changed: handed to it again. */
  function update(rows) {
    const records = rows.filter((r) => inTable.has(r.id)).map(flatten);
    if (records.length) table.updateData(records);
  }

  const atTop = () => {
    const holder = tableHost.querySelector(".tabulator-tableholder");
    return !holder || holder.scrollTop < 40;
  };

  const toRead = new Set(); // loaded rows whose summaries to read again
  let reading = false;
  /** Re-reads the loaded rows among `ids` (their summaries moved, or they ended); ids asked while a read is in
   * flight are read after it. */
  async function reread(ids) {
    for (const id of ids) toRead.add(id);
    if (reading || !ctx.alive()) return;
    reading = true;
    try {
      while (toRead.size && ctx.alive()) {
        const batch = [...toRead].filter((id) => loaded.has(id));
        toRead.clear();
        if (!batch.length) break;
        const rows = await api("runs", { project, entity_type, runs: batch });
        if (!ctx.alive()) return;
        for (const r of rows) if (loaded.has(r.id)) loaded.set(r.id, r);
        update(rows.filter((r) => loaded.has(r.id)));
      }
    } catch (err) {
      ctx.fail(err);
    } finally {
      reading = false;
    }
  }

  // Changes only (the table has its rows); a run started since page 1 was read counts as new.
  const events = openEvents({ project, entity_type, changes: true, since: readAt }, {
    runs: ({ runs, new: started }) => {
      const ended = [];
      const changed = [];
      fresh += started.filter((id) => !loaded.has(id)).length;
      for (const r of runs) {
        const row = loaded.get(r.id);
        if (!row) continue;
        if (row.status === "running" && r.status !== "running") ended.push(r.id);
        Object.assign(row, r); // params and metrics are not in the event: kept
        changed.push(row);
      }
      if (tableReady) update(changed);
      if (ended.length) reread(ended); // the final summaries
      if (fresh && atTop()) reload(); // new runs come first
      else updateCount();
    },
    alerts: (data) => {
      ctx.alerts(data);
      if (tableReady) update([...new Set(data.alerts.map((a) => a.run))].map((id) => loaded.get(id)).filter(Boolean));
    },
    problem: ({ message }) => ctx.problem(message),
  }, ctx.live);
  disposers.push(() => events.close());

  const refresher = setInterval(() => {
    reread([...loaded.values()].filter((r) => r.status === "running").map((r) => r.id));
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
