// The live page: hash routing, the top bar (breadcrumbs, live indicator, messages) and the projects list.
//   #/                                   projects
//   #/p/<project>                        runs table
//   #/p/<project>/curves?metric=&runs=   curves of runs
//   #/p/<project>/run/<id>               one run
//   #/p/<project>/compare?metric=&agg=&by=
import { api, ApiError, AUTH_MESSAGE } from "./api.js";
import { el, href, fmtClock } from "./util.js";
import * as runsPage from "./runs.js";
import * as curvesPage from "./curves.js";
import * as runPage from "./run.js";
import * as comparePage from "./compare.js";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
const banner = document.getElementById("banner");

let current = null; // {dispose, token}
let routeToken = 0;

function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, queryString = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryString);
  if (parts[0] !== "p" || parts.length < 2) return { page: "projects", query };
  const project = parts[1];
  if (parts[2] === "curves") return { page: "curves", project, query };
  if (parts[2] === "compare") return { page: "compare", project, query };
  if (parts[2] === "run" && parts[3] !== undefined) return { page: "run", project, id: parts.slice(3).join("/"), query };
  return { page: "runs", project, query };
}

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
  const root = el("div", { class: `page page-${r.page}` });
  main.append(root);
  const ctx = {
    ...r,
    crumbs: setCrumbs,
    live: (state, date) => { if (token === routeToken) setLive(state, date); },
    fail: (err) => { if (token === routeToken) showError(err); },
    problem: (message) => { if (token === routeToken) showProblem(message); },
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
    showError(err);
    root.replaceChildren(el("div", { class: "empty", text: err.message || String(err) }));
  }
}

// -- projects ---------------------------------------------------------------------------------------------

async function projectsPage(root, ctx) {
  ctx.crumbs([{ text: "Projects", href: "#/" }]);
  root.append(el("div", { class: "loading", text: "Loading projects…" }));
  const projects = await api("projects", {});
  if (!ctx.alive()) return null;
  if (projects.length === 1) {
    location.replace(href(projects[0]));
    return null;
  }
  root.replaceChildren(
    el("section", { class: "card projects" },
      el("h1", { text: "Projects" }),
      projects.length
        ? el("ul", { class: "project-list" }, projects.map((p) =>
          el("li", {},
            el("a", { href: href(p), class: "ellip project-name", title: `runs of ${p}`, text: p }),
            el("a", { href: href(p, "curves"), class: "project-sub", text: "curves" }),
            el("a", { href: href(p, "compare"), class: "project-sub", text: "compare" }))))
        : el("p", { class: "muted", text: "No project holds runs yet. Runs appear here as soon as a training process logs." })));
  return null;
}

window.addEventListener("hashchange", route);
route();
