// The query API of the page's own origin: JSON POSTs, wire floats, and the Server-Sent Events stream.
// The token travels in an HttpOnly cookie the server set when the page was opened with ?token=…;
// nothing here reads or stores it.

export const AUTH_MESSAGE =
  "Not authorised: open the URL that `trackstream ui` (or `trackstream local`) printed, with its ?token=…";

export class ApiError extends Error {
  constructor(status, type, message, retriable = false) {
    super(message);
    this.status = status;
    this.type = type;
    this.retriable = retriable;
  }
  get isAuth() { return this.status === 401; }
}

const F64 = "$f64";
const scratch = new DataView(new ArrayBuffer(8));

/** A float from its IEEE-754 bit pattern: a BigInt (exact), or a JSON number (exact for ±Inf and the usual NaN). */
export function bitsToFloat(bits) {
  scratch.setBigUint64(0, BigInt(bits));
  return scratch.getFloat64(0);
}

const F64_INTEGER = /"\$f64":\s*(\d+)/g;

/**
 * JSON.parse, keeping the "$f64" integers exact: a NaN with a low payload is not an exact double and would
 * round to the bits of Infinity. Chromium gives a reviver the source text of each primitive; a reviver makes a
 * parse several times slower, so it is used only when some "$f64" integer is not an exact double (the usual
 * NaN and ±Inf bit patterns are).
 */
export function parseJson(text) {
  if (!text.includes(F64)) return JSON.parse(text);
  let exact = true;
  for (const match of text.matchAll(F64_INTEGER)) {
    if (BigInt(Number(match[1])) !== BigInt(match[1])) {
      exact = false;
      break;
    }
  }
  if (exact) return JSON.parse(text);
  return JSON.parse(text, (key, value, context) =>
    key === F64 && context && typeof context.source === "string" ? BigInt(context.source) : value);
}

/** Walks a decoded JSON value and turns every {"$f64": bits} into the number it stands for. */
export function fromWire(value) {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      if (item !== null && typeof item === "object") value[i] = fromWire(item);
    }
    return value;
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === F64) return bitsToFloat(value[F64]);
    for (const key of keys) {
      const item = value[key];
      if (item !== null && typeof item === "object") value[key] = fromWire(item);
    }
  }
  return value;
}

const PREFETCH_FRESH_MS = 5000;

/** The read boot.js started before the libraries loaded, if it is this one and fresh (taken once). */
function prefetched(route, body) {
  const early = window.trackstreamPrefetch;
  if (!early || early.route !== route || early.body !== JSON.stringify(body)) return null;
  window.trackstreamPrefetch = null;
  return performance.now() - early.at < PREFETCH_FRESH_MS ? early.response : null;
}

/** POST /api/v1/<route> with a JSON body; resolves to the answer's `result`, rejects with an ApiError. */
export async function api(route, body = {}, { signal } = {}) {
  let response;
  try {
    response = await (prefetched(route, body) || fetch(`/api/v1/${route}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
      signal,
    }));
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "NetworkError", `The server did not answer (${err.message}). Is it still running?`, true);
  }
  let payload = null;
  try {
    payload = parseJson(await response.text());
  } catch {
    /* a body that is not JSON: reported below */
  }
  if (response.status === 401) throw new ApiError(401, "AuthenticationError", AUTH_MESSAGE);
  if (!response.ok || payload === null || "error" in payload) {
    const e = (payload && payload.error) || {};
    throw new ApiError(response.status, e.type || "HTTPError",
      e.message || `${route}: HTTP ${response.status}`, Boolean(e.retriable));
  }
  return fromWire(payload.result);
}

/** Runs `fn` over `items` with at most `limit` calls in flight; resolves to the results in order. */
export async function mapLimit(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * One live stream: GET /api/v1/events with `params` (project, metric, runs, points).
 * `handlers`: {runs, curves, buckets, alerts, problem} get the decoded event data; `onState(state, detail)` gets
 * "connecting" | "open" | "update" | "reconnecting" | "unauthorised" | "closed".
 * Returns {close()}.
 */
export function openEvents(params, handlers, onState = () => {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    query.set(key, Array.isArray(value) ? value.join(",") : String(value));
  }
  let closed = false;
  let source = null;
  let retry = null;
  function connect() {
    source = new EventSource(`/api/v1/events?${query}`);
    onState("connecting");
    source.addEventListener("open", () => onState("open"));
    for (const name of ["runs", "curves", "buckets", "alerts", "problem"]) {
      source.addEventListener(name, (event) => {
        if (closed || !handlers[name]) return;
        let data;
        try {
          data = fromWire(parseJson(event.data));
        } catch (err) {
          console.warn("bad event", name, err);
          return;
        }
        handlers[name](data);
        if (name !== "problem") onState("update", new Date());
      });
    }
    source.addEventListener("error", async () => {
      if (closed) return;
      if (source.readyState !== EventSource.CLOSED) {
        onState("reconnecting"); // the browser retries by itself
        return;
      }
      // The browser gives up on a non-200 answer without saying which: ask the API whether it is the token.
      let status = 0;
      try {
        status = (await fetch("/api/v1/health", { credentials: "same-origin" })).status;
      } catch {
        /* server gone: retried below */
      }
      if (closed) return;
      if (status === 401) {
        onState("unauthorised");
        return;
      }
      onState("reconnecting");
      retry = setTimeout(connect, 3000);
    });
  }
  connect();
  return {
    close() {
      closed = true;
      clearTimeout(retry);
      source.close();
    },
  };
}
