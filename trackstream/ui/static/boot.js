// Starts the runs table's read as soon as the page's HTML is parsed, while the chart and table libraries are
// still loading and compiling (this module is `async`: it runs without waiting for them). The runs page takes
// the answer through api.js's `prefetched`; any other route reads nothing here.
const raw = location.hash.replace(/^#/, "");
const [path, queryString = ""] = raw.split("?");
const parts = path.split("/").filter(Boolean);
if (parts[0] === "p" && parts.length === 2) {
  const body = { project: decodeURIComponent(parts[1]),
    entity_type: new URLSearchParams(queryString).get("type") === "model" ? "model" : "run" };
  window.trackstreamPrefetch = {
    route: "runs",
    at: performance.now(),
    body: JSON.stringify(body),
    response: fetch("/api/v1/runs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      credentials: "same-origin",
    }),
  };
}
