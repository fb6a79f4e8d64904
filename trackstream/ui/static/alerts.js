// Fired alerts in the top bar: a button with the count of rules firing now, a panel of the project's recent
// transitions, and a toast for each alert that fires while the page is open. Alerts are evaluated by the
// stream worker or the local runner, never here: the rows come from the event stream's `alerts` event
// (trackstream/api/events.py), the same rows as `trackstream alerts list`.
import { el, href, fmtNum, fmtDateTime, noun } from "./util.js";

const HISTORY_MAX = 200; // transitions kept per project
const TOAST_MS = 20000;
const TOASTS_SHOWN = 3;
const FRESH_NS = 5 * 60 * 1e9; // a firing alert this recent shows as a toast even in a stream's first event

const key = (a) => `${a.rule_id}\u0000${a.run}\u0000${a.time_ns}\u0000${a.state}`;
const pair = (a) => `${a.rule_id}\u0000${a.run}`;

/** "diverge" on loss > 3 at step 120 … : one line of what happened. */
function describe(a) {
  const where = a.step === null || a.step === undefined ? "" : ` at step ${a.step}`;
  const value = a.value === null || a.value === undefined ? "" : ` (value ${fmtNum(a.value)})`;
  return a.message || `${a.when} on ${a.metric}${where}${value}`;
}

/**
 * The top bar's alerts control, mounted into `host`. Returns {project(key, name), add(rows), firing(run?)}:
 * `project` switches to a project's runs or models (`key`: its state is kept while the page lives; `name`: the
 * project), `add` takes an `alerts` event's rows.
 */
export function createAlerts(host, toastHost) {
  const projects = new Map(); // project -> {rows: Map key -> row, primed}
  let current = null; // the state's key: the project and kind of entity shown
  let currentName = null;
  let open = false;

  const count = el("span", { class: "alerts-count" });
  const button = el("button", {
    type: "button", class: "alerts-button", title: "Alerts of this project", "aria-haspopup": "true",
    on: { click: (event) => { event.stopPropagation(); toggle(!open); } },
  }, el("span", { class: "alerts-dot", "aria-hidden": "true" }), count);
  const panel = el("div", { class: "alerts-panel card", hidden: true, role: "dialog", "aria-label": "Alerts" });
  host.replaceChildren(button, panel);
  host.hidden = true;
  document.addEventListener("click", (event) => { if (open && !panel.contains(event.target)) toggle(false); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && open) toggle(false); });

  function state() {
    if (!projects.has(current)) projects.set(current, { rows: new Map(), primed: false });
    return projects.get(current);
  }

  /** Per (rule, run) the newest transition; the firing ones are the alerts active now. */
  function newest() {
    const byPair = new Map();
    for (const a of state().rows.values()) {
      const seen = byPair.get(pair(a));
      if (!seen || a.time_ns > seen.time_ns) byPair.set(pair(a), a);
    }
    return [...byPair.values()];
  }

  function firing(run) {
    return newest().filter((a) => a.state === "firing" && (run === undefined || a.run === run));
  }

  function render() {
    if (current === null) {
      host.hidden = true;
      return;
    }
    const rows = [...state().rows.values()].sort((a, b) => b.time_ns - a.time_ns);
    const active = firing();
    host.hidden = !rows.length;
    button.classList.toggle("alerts-firing", active.length > 0);
    count.textContent = active.length ? `${active.length} firing` : "alerts";
    button.title = active.length
      ? `${active.length} alert(s) firing in ${currentName}: ${active.map((a) => `${a.run}: ${describe(a)}`).join("; ")}`
      : `No alert firing in ${currentName}; ${rows.length} recent transition(s)`;
    host.dataset.firing = String(active.length);
    if (open) renderPanel(rows, active);
  }

  function renderPanel(rows, active) {
    const activeKeys = new Set(active.map(key));
    panel.replaceChildren(
      el("h2", { text: `Alerts · ${currentName}` }),
      el("p", { class: "muted alerts-help", text: `Rules: trackstream alerts rules ${currentName} · add one: trackstream alerts add ${currentName} --metric M --when nan` }),
      el("table", { class: "alerts-table" },
        el("thead", {}, el("tr", {}, ["", noun(), "rule", "step", "value", "time", ""].map((t) => el("th", { text: t })))),
        el("tbody", {}, rows.slice(0, 100).map((a) => el("tr", { class: activeKeys.has(key(a)) ? "alert-active" : "" },
          el("td", {}, el("span", { class: `badge ${a.state === "firing" ? "status-failed" : "status-completed"}`, text: a.state })),
          el("td", {}, el("a", { href: href(currentName, `run/${a.run}`), class: "ellip", text: a.run, title: a.run })),
          el("td", { class: "mono", text: `${a.when} · ${a.metric}`, title: describe(a) }),
          el("td", { class: "num", text: a.step === null || a.step === undefined ? "—" : String(a.step) }),
          el("td", { class: `num ${Number.isFinite(a.value) || a.value === null ? "" : "nonfinite"}`, text: fmtNum(a.value) }),
          el("td", { class: "muted", text: fmtDateTime(a.time) }),
          el("td", {}, el("a", { href: href(currentName, "curves", { metric: a.metric, runs: [a.run] }), text: "curve" })))))));
  }

  function toggle(value) {
    open = value;
    panel.hidden = !open;
    if (open) render();
  }

  // Pop-ups: one per (rule, run), the newest firing replacing an older one and a resolution taking it away; at
  // most TOASTS_SHOWN at once, the rest counted in a line that opens the list. A flapping rule thus shows one.
  const toasts = new Map(); // pair -> {node, timer}
  const more = el("div", { class: "alert-more", hidden: true });

  function dropToast(p) {
    const t = toasts.get(p);
    if (!t) return;
    clearTimeout(t.timer);
    t.node.remove();
    toasts.delete(p);
    layoutToasts();
  }

  function toast(a) {
    const p = pair(a);
    const t = toasts.get(p);
    if (t) {
      clearTimeout(t.timer);
      t.node.remove();
    }
    const node = el("div", { class: "alert-toast", role: "status", dataset: { run: a.run, rule: a.rule_id } },
      el("span", { class: "alert-toast-title", text: `Alert: ${a.when} on ${a.metric}` }),
      el("span", {}, describe(a), " · ", el("a", { href: href(currentName, "curves", { metric: a.metric, runs: [a.run] }), text: "curve" })),
      el("button", { type: "button", class: "btn-link", text: "dismiss", on: { click: () => dropToast(p) } }));
    toasts.set(p, { node, timer: setTimeout(() => dropToast(p), TOAST_MS) });
    layoutToasts();
  }

  function layoutToasts() {
    const all = [...toasts.values()].map((t) => t.node);
    const shown = all.slice(-TOASTS_SHOWN);
    const hiddenCount = all.length - shown.length;
    more.hidden = !hiddenCount;
    more.replaceChildren(
      el("span", { text: `${hiddenCount} more alert${hiddenCount === 1 ? "" : "s"}` }),
      el("button", { type: "button", class: "btn-link", text: "show the list", on: { click: (event) => { event.stopPropagation(); toggle(true); } } }),
      el("button", { type: "button", class: "btn-link", text: "dismiss all", on: { click: () => { for (const p of [...toasts.keys()]) dropToast(p); } } }));
    toastHost.replaceChildren(more, ...shown);
  }

  function clearToasts() {
    for (const t of toasts.values()) clearTimeout(t.timer);
    toasts.clear();
    layoutToasts();
  }

  return {
    project(key, name) {
      if (key === current) return;
      current = key ?? null;
      currentName = name ?? null;
      clearToasts();
      toggle(false);
      render();
    },
    add(rows) {
      if (current === null) return;
      const s = state();
      const now = Date.now() * 1e6;
      const added = rows.filter((a) => !s.rows.has(key(a)));
      for (const a of added) s.rows.set(key(a), a);
      // Per pair, what it says now: a pop-up while firing (in a project's first rows, only if recent), none once
      // resolved.
      const newestOfPair = new Map(newest().map((a) => [pair(a), a]));
      for (const p of new Set(added.map(pair))) {
        const a = newestOfPair.get(p);
        if (a.state !== "firing") dropToast(p);
        else if (added.includes(a) && (s.primed || now - a.time_ns < FRESH_NS)) toast(a);
      }
      s.primed = true;
      if (s.rows.size > HISTORY_MAX) { // the oldest go, never a pair's newest transition (what fires now)
        const newestKeys = new Set(newest().map(key));
        const sorted = [...s.rows.entries()].sort((x, y) => y[1].time_ns - x[1].time_ns);
        s.rows = new Map(sorted.filter(([k], i) => i < HISTORY_MAX || newestKeys.has(k)));
      }
      render();
    },
    firing,
  };
}
