// The gateway's public API, as the console calls it: the API key from session storage as a
// bearer token, errors turned into ApiError with the gateway's message, server-sent events
// read from fetch (EventSource cannot send the key).

const KEY = "tuneyard.apiKey";
// An admin key's chosen project, sent as OpenAI's OpenAI-Project header ("" = every project).
const PROJECT = "tuneyard.project";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export function project() {
  return sessionStorage.getItem(PROJECT) || "";
}

export function setProject(id) {
  if (id) sessionStorage.setItem(PROJECT, id);
  else sessionStorage.removeItem(PROJECT);
}

export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  const chosen = project();
  return {
    ...extra,
    ...(key ? { Authorization: `Bearer ${key}` } : {}),
    ...(chosen ? { "OpenAI-Project": chosen } : {}),
  };
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let param = null;
  try {
    const body = await response.json();
    // OpenAI's body {error: {message, param}} or TGI's {error, error_type}.
    const error = body.error;
    if (typeof error === "string") message = error;
    else if (error && error.message) {
      message = error.message;
      param = error.param;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, param);
}

export async function request(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function get(path) {
  return (await request("GET", path)).json();
}

export async function post(path, body) {
  return (await request("POST", path, body)).json();
}

export async function text(path) {
  return (await request("GET", path)).text();
}

// The `data:` payloads of a server-sent event stream, parsed as JSON, until it ends or
// the stream says [DONE]; `signal` aborts it.
export async function* events(method, path, body, signal) {
  const init = { method, headers: headers({ Accept: "text/event-stream" }), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) {
        const event = JSON.parse(data);
        if (event.error) {
          const error = event.error;
          throw new ApiError(0, typeof error === "string" ? error : error.message, null);
        }
        yield event;
      }
      end = buffer.indexOf("\n\n");
    }
  }
}

// Prometheus' text format: [{name, labels, value}] for each sample line.
export function parseMetrics(exposition) {
  const samples = [];
  for (const line of exposition.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2];
    }
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}
