// Starts the runs table's first read as soon as the page's HTML is parsed, while the chart and table libraries
// are still loading and compiling (this module is `async`: it runs without waiting for them). The runs page
// takes the answer through api.js's `prefetched` when it asks for the same page; other routes read nothing here.
import { pageBody } from "./runs.js";
import { parseRoute } from "./util.js";

const route = parseRoute();
if (route.page === "runs") {
  const body = JSON.stringify(pageBody(route.project, route.type));
  window.trackstreamPrefetch = {
    route: "runs_table",
    at: performance.now(),
    body,
    response: fetch("/api/v1/runs_table", {
      method: "POST", headers: { "Content-Type": "application/json" }, body, credentials: "same-origin",
    }),
  };
}
