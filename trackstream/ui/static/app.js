// The live page: hash routing, the top bar (breadcrumbs, live indicator, messages) and the projects list.
//   #/                                   projects
//   #/p/<project>                        runs table
//   #/p/<project>/curves?metric=&runs=   curves of runs
//   #/p/<project>/run/<id>               one run
//   #/p/<project>/compare?metric=&agg=&by=
import { api, ApiError, AUTH_MESSAGE } from "./api.js";
import { el, href, fmtClock, setKind, parseRoute } from "./util.js";
import * as runsPage from "./runs.js";
import * as curvesPage from "./curves.js";
import * as runPage from "./run.js";
import * as comparePage from "./compare.js";
import { createAlerts } from "./alerts.js";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
const banner = document.getElementById("banner");
const alerts = createAlerts(document.getElementById("alerts"), document.getElementById("toasts"));

const NOT_FOUND_RETRY_MS = 1000;

let current = null; // {dispose, token}
let routeToken = 0;

function setCrumbs(items) {
  crumbs.replaceChildren(...items.flatMap((item, i) => {
    const node = item.href && i < items.length - 1
      ? el("a", { href: item.href, text: item.text, title: item.text })
      : el("span", { class: "crumb-current", text: item.text, title: item.text });
    return i ? [el("span", { class: "crumb-sep", text: "/" }), node] : [node];
  }));
  document.title = items.length ? `${items[items.length - 1].text} · trackstream` : "trackstream";
}

/** The top bar's live indicator: state "off" | "connecting" | "open" | "update" | "reconnecting" | ... */
function setLive(state, date) {
  if (state === "off") {
    live.replaceChildren();
    delete live.dataset.when;
    live.className = "live";
    return;
  }
  if (state === "unauthorised") {
    showError(new ApiError(401, "AuthenticationError", AUTH_MESSAGE));
    state = "closed";
  }
  const labels = {
    connecting: "connecting…", open: "live", update: "live", reconnecting: "reconnecting…", closed: "not live",
  };
  live.className = `live live-${state === "update" ? "open" : state}`;
  const when = date ? ` · updated ${fmtClock(date)}` : live.dataset.when || "";
  if (date) live.dataset.when = when;
  live.replaceChildren(el("span", { class: "live-dot" }), el("span", { text: `${labels[state] || state}${state === "open" || state === "update" ? when : ""}` }));
  live.title = "Server push (Server-Sent Events) of this page";
}

let bannerTimer = null;

/** Shows an error above the page; a 401 stays, with what to do. */
function showError(err) {
  if (err && err.name === "AbortError") return;
  console.error(err);
  const auth = err instanceof ApiError && err.isAuth;
  const text = auth ? AUTH_MESSAGE : (err && err.message) || String(err);
  banner.hidden = false;
  banner.className = auth ? "banner banner-auth" : "banner banner-error";
  banner.replaceChildren(el("span", { class: "banner-text", text }));
  if (!auth) banner.append(el("button", { class: "btn-link", type: "button", text: "dismiss", on: { click: () => { banner.hidden = true; } } }));
  clearTimeout(bannerTimer);
  if (!auth) bannerTimer = setTimeout(() => { banner.hidden = true; }, 15000);
}

/** A quiet note in the top bar (the stream's `problem` events). */
function showProblem(message) {
  const note = document.getElementById("problem");
  note.textContent = message ? `⚠ ${message}` : "";
  note.title = message || "";
  note.hidden = !message;
}

async function route() {
  const token = ++routeToken;
  if (current) {
    try { current.dispose(); } catch (err) { console.error(err); }
    current = null;
  }
  if (!(banner.className.includes("banner-auth"))) banner.hidden = true;
  setLive("off");
  showProblem("");
  main.replaceChildren();
  const r = parseRoute();
  setKind(r.type);
  alerts.project(r.project === undefined ? undefined : `${r.type}:${r.project}`, r.project);
  const root = el("div", { class: `page page-${r.page}` });
  main.append(root);
  const ctx = {
    ...r,
    crumbs: setCrumbs,
    live: (state, date) => { if (token === routeToken) setLive(state, date); },
    fail: (err) => { if (token === routeToken) showError(err); },
    problem: (message) => { if (token === routeToken) showProblem(message); },
    alerts: ({ alerts: rows }) => { if (token === routeToken) alerts.add(rows); },
    firing: (run) => alerts.firing(run),
    alive: () => token === routeToken,
  };
  const pages = { projects: projectsPage, runs: runsPage.mount, curves: curvesPage.mount, run: runPage.mount, compare: comparePage.mount };
  try {
    const dispose = await pages[r.page](root, ctx);
    if (token !== routeToken) {
      if (dispose) dispose();
      return;
    }
    current = { dispose: dispose || (() => {}) };
  } catch (err) {
    if (token !== routeToken) return;
    if (err instanceof ApiError && err.type === "NotFoundError" && r.project !== undefined) {
      // Opened before the training process logged (a bookmarked curve, a run about to start): wait for it. The
      // project is asked for quietly (the projects list, no failing request a second); the page is read again
      // once it exists (a run or metric it names that is still missing brings it back here).
      root.replaceChildren(el("div", { class: "empty waiting", text: `${err.message}. Waiting for it to be logged…` }));
      let timer = null;
      const poll = async () => {
        if (token !== routeToken) return;
        let known = false;
        try {
          known = (await api("projects", { entity_type: r.type })).includes(r.project);
        } catch { /* the server is away: asked again */ }
        if (token !== routeToken) return;
        if (known) route();
        else timer = setTimeout(poll, NOT_FOUND_RETRY_MS);
      };
      timer = setTimeout(poll, NOT_FOUND_RETRY_MS);
      current = { dispose: () => clearTimeout(timer) };
      return;
    }
    showError(err);
    root.replaceChildren(el("div", { class: "empty", text: err.message || String(err) }));
  }
}

// -- projects ---------------------------------------------------------------------------------------------

async function projectsPage(root, ctx) {
  ctx.crumbs([{ text: "Projects", href: "#/" }]);
  root.append(el("div", { class: "loading", text: "Loading projects…" }));
  const [runProjects, modelProjects] = await Promise.all([
    api("projects", {}), api("projects", { entity_type: "model" })]);
  if (!ctx.alive()) return null;
  const projects = [...new Set([...runProjects, ...modelProjects])].sort();
  const hasRuns = new Set(runProjects);
  const hasModels = new Set(modelProjects);
  if (projects.length === 1) {
    location.replace(href(projects[0], "", { type: hasRuns.has(projects[0]) ? "run" : "model" }));
    return null;
  }
  root.replaceChildren(
    el("section", { class: "card projects" },
      el("h1", { text: "Projects" }),
      projects.length
        ? el("ul", { class: "project-list" }, projects.map((p) =>
          el("li", {},
            el("a", { href: href(p, "", { type: hasRuns.has(p) ? "run" : "model" }), class: "ellip project-name", title: `runs of ${p}`, text: p }),
            hasRuns.has(p) ? el("a", { href: href(p, "curves", { type: "run" }), class: "project-sub", text: "curves" }) : null,
            hasRuns.has(p) ? el("a", { href: href(p, "compare", { type: "run" }), class: "project-sub", text: "compare" }) : null,
            hasModels.has(p) ? el("a", { href: href(p, "", { type: "model" }), class: "project-sub", text: "models" }) : null)))
        : el("p", { class: "muted", text: "No project holds runs or models yet. Runs appear here as soon as a training process logs." })));
  return null;
}

window.addEventListener("hashchange", route);
route();
