// Adapters: each version (the one its name points to marked), what it is, whether it is
// loaded, and the gateway's serving figures for its name (from /metrics); load and unload
// for admin keys.

import { get, parseMetrics, post, text } from "./api.js";
import { bytes, errorBox, h, number, replace, table, when } from "./dom.js";

const BASE_LABEL = "(base)";

// {adapter label: {requests, tokensPerSecond, firstTokenS}} from the gateway's metrics.
function servingFigures(exposition) {
  const figures = {};
  const of = (label) => (figures[label] ??= {});
  const sums = {};
  for (const s of parseMetrics(exposition)) {
    const label = s.labels.adapter;
    if (label === undefined) continue;
    if (s.name === "tuneyard_gateway_generations_total") of(label).requests = s.value;
    const m = s.name.match(/^tuneyard_gateway_(time_per_output_token|time_to_first_token)_seconds_(sum|count)$/);
    if (m) ((sums[label] ??= {})[`${m[1]}_${m[2]}`] = s.value);
  }
  for (const [label, sum] of Object.entries(sums)) {
    if (sum.time_per_output_token_count && sum.time_per_output_token_sum) {
      of(label).tokensPerSecond = sum.time_per_output_token_count / sum.time_per_output_token_sum;
    }
    if (sum.time_to_first_token_count) {
      of(label).firstTokenS = sum.time_to_first_token_sum / sum.time_to_first_token_count;
    }
  }
  return figures;
}

function servingCells(f = {}) {
  return [
    h("td", {}, f.requests ?? 0),
    h("td", {}, f.tokensPerSecond ? number(f.tokensPerSecond, 1) : "—"),
    h("td", {}, f.firstTokenS ? `${number(f.firstTokenS * 1000, 0)} ms` : "—"),
  ];
}

// Versions are numbers: the newest is the one a bare name means.
function newestVersions(adapters) {
  const newest = {};
  for (const a of adapters) {
    if (!(a.name in newest) || Number(a.version) > Number(newest[a.name])) newest[a.name] = a.version;
  }
  return newest;
}

export async function adaptersPage(ctx) {
  const message = h("div", { id: "adapter-message" });
  const body = h("div");
  replace(ctx.view, h("h1", {}, "Adapters"), message, body);

  const draw = async () => {
    const [adapters, models, exposition] = await Promise.all([
      get("/v1/adapters"),
      get("/v1/models"),
      text("/metrics"),
    ]);
    const figures = servingFigures(exposition);
    const base = models.data.find((m) => !m.parent);
    const newest = newestVersions(adapters.data);
    const sorted = [...adapters.data].sort(
      (a, b) => a.name.localeCompare(b.name) || Number(b.version) - Number(a.version),
    );
    const action = (adapter, verb) =>
      h("button", {
        class: `${verb}-adapter`,
        onclick: async (event) => {
          event.target.disabled = true;
          replace(message);
          try {
            await post(`/v1/adapters/${encodeURIComponent(adapter.id)}/${verb}`);
          } catch (error) {
            replace(message, errorBox(error));
          }
          await draw();
        },
      }, verb === "load" ? "Load" : "Unload");
    const rows = sorted.map((a) =>
      h("tr", { dataset: { adapter: a.id, state: a.state } },
        h("td", {}, a.name),
        h("td", {}, a.version, newest[a.name] === a.version ? h("span", { class: "tag" }, `← ${a.name}`) : null),
        h("td", {}, a.rank || "—"),
        h("td", {}, a.target_modules.join(", ") || "—"),
        h("td", {}, a.base_model || "—"),
        h("td", {}, bytes(a.size)),
        h("td", { class: "state" }, a.state),
        h("td", {}, when(a.last_used_at)),
        newest[a.name] === a.version ? servingCells(figures[a.name]) : [h("td"), h("td"), h("td")],
        ctx.admin ? h("td", {}, a.loaded ? action(a, "unload") : action(a, "load")) : null),
    );
    const columns = ["Name", "Version", "Rank", "Target modules", "Base model", "Size", "State",
      "Last use", "Requests", "Tokens/s", "First token"];
    if (ctx.admin) columns.push("");
    replace(
      body,
      h("p", {}, "Base model ", h("strong", {}, base ? base.id : "—"), ": ",
        `${figures[BASE_LABEL]?.requests ?? 0} requests`),
      adapters.data.length
        ? table(columns, rows, { id: "adapters" })
        : h("p", { class: "muted" }, "No adapters published yet."),
      h("p", { class: "muted" },
        "Serving figures are this gateway's since it started, per adapter name: tokens/s and " +
        "first-token latency from streamed requests."),
    );
  };
  await draw();
}
