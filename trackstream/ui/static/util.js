// Small DOM, formatting and state helpers shared by the pages.

/** el("a", {class: "x", href: "#/", title, text, on: {click: fn}, style: {...}, dataset: {...}}, ...children) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** A labelled control: <label class="field"><span>label</span>control</label>. */
export function field(label, control, extraClass = "") {
  return el("label", { class: `field ${extraClass}` }, el("span", { class: "field-label", text: label }), control);
}

/** A labelled group of controls (radio buttons, a checkbox with its own label): no nested <label>. */
let groupIds = 0;
export function fieldGroup(label, control, extraClass = "") {
  const id = `grp-${++groupIds}`;
  return el("div", { class: `field ${extraClass}`, role: "group", "aria-labelledby": id },
    el("span", { class: "field-label", id, text: label }), control);
}

export function select(options, value, onChange, props = {}) {
  const node = el("select", props,
    options.map((o) => {
      const [v, text] = Array.isArray(o) ? o : [o, o];
      return el("option", { value: v, text, selected: String(v) === String(value) });
    }));
  node.addEventListener("change", () => onChange(node.value));
  return node;
}

// -- routes ------------------------------------------------------------------------------------------

const enc = encodeURIComponent;

// The kind of entity the current view shows: "run", or "model" (a route's `type=model`). Links keep it.
let entityKind = "run";

export function setKind(kind) {
  entityKind = kind === "model" ? "model" : "run";
}

export function kind() {
  return entityKind;
}

/** "run" / "runs", "model" / "models", "Runs"…: the current kind's noun. */
export function noun(plural = false, capital = false) {
  const word = `${entityKind}${plural ? "s" : ""}`;
  return capital ? word[0].toUpperCase() + word.slice(1) : word;
}

/**
 * "#/p/<project>[/<page>][?query]"; `query` values that are arrays are comma-joined, empty ones dropped. The link
 * keeps the current kind (`type=model`) unless `query.type` says otherwise ("run" drops it).
 */
export function href(project, page = "", query = {}) {
  let h = project === undefined ? "#/" : `#/p/${enc(project)}`;
  if (page) h += `/${page.split("/").map(enc).join("/")}`;
  const q = new URLSearchParams();
  const type = query.type === undefined ? entityKind : query.type;
  if (project !== undefined && type === "model") q.set("type", "model");
  for (const [k, v] of Object.entries(query)) {
    if (k === "type") continue;
    if (v === undefined || v === null || v === "" || (Array.isArray(v) && !v.length)) continue;
    q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const s = q.toString().replace(/%2C/g, ",");
  return s ? `${h}?${s}` : h;
}

/**
 * The view the address names: {page: "projects" | "runs" | "curves" | "compare" | "run", project, id, query,
 * type: "run" | "model"} (routes in app.js).
 */
export function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, queryString = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryString);
  const type = query.get("type") === "model" ? "model" : "run";
  if (parts[0] !== "p" || parts.length < 2) return { page: "projects", query, type };
  const project = parts[1];
  if (parts[2] === "curves") return { page: "curves", project, query, type };
  if (parts[2] === "compare") return { page: "compare", project, query, type };
  if (parts[2] === "run" && parts[3] !== undefined) {
    return { page: "run", project, id: parts.slice(3).join("/"), query, type };
  }
  return { page: "runs", project, query, type };
}

/** Replaces the address without a route change (controls that only refine the current page). */
export function replaceHash(hash) {
  history.replaceState(null, "", hash);
}

// -- formatting ----------------------------------------------------------------------------------------

export function fmtNum(v, digits = 5) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "Inf";
  if (v === -Infinity) return "-Inf";
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-4)) return v.toExponential(digits - 2).replace(/\.?0+e/, "e");
  return String(Number(v.toPrecision(digits)));
}

export const isFiniteNum = (v) => typeof v === "number" && Number.isFinite(v);

export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** Milliseconds a run lasted (to now while it runs; null without a start). */
export function durationMs(row, now = Date.now()) {
  const start = parseTime(row.started_at);
  if (start === null) return null;
  const end = parseTime(row.ended_at);
  if (end !== null) return Math.max(0, end - start);
  return row.status === "running" ? Math.max(0, now - start) : null;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const p2 = (n) => String(n).padStart(2, "0");
  if (d) return `${d}d ${p2(h)}h`;
  if (h) return `${h}h ${p2(m)}m`;
  if (m) return `${m}m ${p2(s)}s`;
  return `${s}s`;
}

export function fmtDateTime(iso) {
  const t = parseTime(iso);
  if (t === null) return "—";
  const d = new Date(t);
  const p2 = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())} ${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
}

export function fmtClock(date) {
  return date.toLocaleTimeString([], { hour12: false });
}

export function fmtValue(v) {
  if (v !== null && typeof v === "object") return JSON.stringify(v);
  if (typeof v === "number") return fmtNum(v, 6);
  if (v === null || v === undefined) return "—";
  return String(v);
}

// -- run status and NaN/Inf flags ---------------------------------------------------------------------

export const STATUSES = ["running", "completed", "failed", "crashed", "killed"];

export function statusBadge(status) {
  if (!status) return el("span", { class: "muted", text: "—", title: "no status reported" });
  const s = status;
  return el("span", { class: `badge status-${s}`, title: `status: ${s}` },
    s === "running" ? el("span", { class: "pulse" }) : null, s);
}

/** "NaN:3@50 Inf:1@60" for a summary/row with nan_count, inf_count, first_nan_step, first_inf_step; "" if none. */
export function nanFlagText(m) {
  if (!m) return "";
  const parts = [];
  if (m.nan_count > 0) parts.push(`NaN:${m.nan_count}${m.first_nan_step != null ? `@${m.first_nan_step}` : ""}`);
  if (m.inf_count > 0) parts.push(`Inf:${m.inf_count}${m.first_inf_step != null ? `@${m.first_inf_step}` : ""}`);
  return parts.join(" ");
}

export function nanBadge(text, title) {
  return text ? el("span", { class: "badge nanflag", text, title: title || "non-finite values: count@first step" }) : null;
}

/** A text node wrapper that ellipsises and shows the whole text on hover. */
export function ellip(text, props = {}) {
  return el(props.href ? "a" : "span", { ...props, class: `ellip ${props.class || ""}`, title: text, text });
}

// -- colours: stable per run id -------------------------------------------------------------------------

// Tableau-like, without red (red marks NaN/Inf); the first ten are used while ten runs or fewer are shown.
export const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#111827",
  "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#637939", "#dbdb8d", "#9edae5", "#843c39",
];

function hash(s) {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Colour per id: each id's hashed palette slot, moved to the next free slot on a clash within `ids`. */
export function assignColors(ids) {
  const taken = new Set();
  const out = new Map();
  const size = ids.length <= 10 ? 10 : PALETTE.length;
  for (const id of [...ids].sort()) {
    let slot = hash(id) % size;
    for (let k = 0; k < size && taken.has(slot); k++) slot = (slot + 1) % size;
    taken.add(slot);
    out.set(id, PALETTE[slot]);
  }
  return out;
}

export function alpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

// -- a dropdown with checkboxes (multi-select) ---------------------------------------------------------

/**
 * multiSelect({label, options, selected, onChange, empty}) -> element with .setOptions(options, selected).
 * `options`: strings; `onChange(selectedArray)`.
 */
export function multiSelect({ label, options, selected = [], onChange, empty = "none", id }) {
  let chosen = new Set(selected);
  let all = [...options];
  const summary = el("summary", { class: "ms-summary" });
  const list = el("div", { class: "ms-list", role: "listbox" });
  const root = el("details", { class: "multiselect", id }, summary, list);
  const wrapper = fieldGroup(label, root);

  function render() {
    const shown = all.filter((o) => chosen.has(o));
    summary.textContent = shown.length ? shown.join(", ") : empty;
    summary.title = summary.textContent;
    list.replaceChildren(...all.map((o) => {
      const box = el("input", { type: "checkbox", checked: chosen.has(o) });
      box.addEventListener("change", () => {
        if (box.checked) chosen.add(o); else chosen.delete(o);
        render();
        onChange(all.filter((x) => chosen.has(x)));
      });
      return el("label", { class: "ms-item", title: o }, box, el("span", { class: "ellip", text: o }));
    }));
    if (!all.length) list.append(el("div", { class: "muted ms-item", text: "nothing to choose" }));
  }
  wrapper.setOptions = (options2, selected2) => {
    all = [...options2];
    if (selected2) chosen = new Set(selected2);
    render();
  };
  wrapper.selected = () => all.filter((x) => chosen.has(x));
  render();
  return wrapper;
}

// One listener for every dropdown: a click elsewhere closes it.
document.addEventListener("click", (e) => {
  for (const d of document.querySelectorAll("details.multiselect[open]")) if (!d.contains(e.target)) d.open = false;
});

// -- preferences (display settings only) ---------------------------------------------------------------

export function pref(key, fallback) {
  try {
    const v = localStorage.getItem(`trackstream.${key}`);
    return v === null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}

export function setPref(key, value) {
  try {
    localStorage.setItem(`trackstream.${key}`, JSON.stringify(value));
  } catch {
    /* private mode: settings just do not persist */
  }
}

/** Calls fn at most once per `ms` (trailing call kept). */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return (...args) => {
    const wait = last + ms - Date.now();
    if (wait <= 0) {
      last = Date.now();
      fn(...args);
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn(...args);
      }, wait);
    }
  };
}

/** Metric names of runs rows, `loss` first when present. */
/** Metric names in the order the pages offer them: "loss" first (the usual default), then by name. */
export function orderMetrics(names) {
  return [...new Set(names)].sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
}

export function seriesMetricNames(rows) {
  return orderMetrics(rows.flatMap((r) => Object.entries(r.metrics || {}).filter(([, s]) => s.kind !== "single").map(([m]) => m)));
}

/** Text for a place that takes HTML (Tabulator's column titles): names logged by users stay text. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
