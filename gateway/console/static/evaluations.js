// Evaluations: the list, and one evaluation's table (zero-shot, few-shot and adapter arms)
// with its HTML report, which is shown in a sandboxed frame (no scripts, no same origin).

import { get, text } from "./api.js";
import { duration, errorBox, h, number, replace, statusBadge, table, when } from "./dom.js";

const RUNNING = new Set(["queued", "running"]);

export async function evaluationsPage(ctx) {
  const list = (await get("/v1/evaluations?limit=100")).data;
  const rows = list.map((e) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/evaluations/${e.id}` }, e.id)),
      h("td", {}, statusBadge(e.status)),
      h("td", {}, e.adapter_id || e.spec.adapter_id || "—"),
      h("td", {}, e.spec.job_id ? h("a", { href: `#/jobs/${e.spec.job_id}` }, e.spec.job_id) : "—"),
      h("td", {}, e.rows || "—"),
      h("td", {}, when(e.created_at)),
      h("td", {}, e.finished_at && e.started_at ? duration(e.finished_at - e.started_at) : "—")),
  );
  replace(
    ctx.view,
    h("h1", {}, "Evaluations"),
    list.length
      ? table(["Evaluation", "Status", "Adapter", "Job", "Rows", "Created", "Took"], rows, { id: "evaluations" })
      : h("p", { class: "muted" }, "None yet: a job spec's `evaluation` runs one after training."),
  );
}

export async function evaluationPage(ctx, id) {
  const e = await get(`/v1/evaluations/${id}`);
  const checks = [...new Set(e.arms.flatMap((a) => Object.keys(a.checks || {})))];
  const rows = e.arms.map((a) =>
    h("tr", { dataset: { arm: a.name } },
      h("td", {}, a.name),
      h("td", {}, a.adapter_id || "base"),
      h("td", {}, number(a.eval_loss)),
      h("td", {}, number(a.perplexity, 2)),
      checks.map((c) => h("td", {}, number(a.checks?.[c]))),
      h("td", {}, number(a.mean_output_tokens, 1)),
      h("td", {}, `${number(a.mean_latency_s, 2)} s`),
      h("td", {}, number(a.tokens_per_second, 1))),
  );
  const report = h("div", { id: "report" });
  replace(
    ctx.view,
    h("h1", {}, e.id, " ", statusBadge(e.status)),
    h("p", {}, `${e.adapter_id || e.spec.adapter_id || ""} on ${e.rows} rows of ${e.eval_source || "—"}`,
      e.spec.job_id ? [" · job ", h("a", { href: `#/jobs/${e.spec.job_id}` }, e.spec.job_id)] : null),
    e.error ? errorBox({ message: e.error }) : null,
    RUNNING.has(e.status) ? h("p", {}, `${e.done_requests} / ${e.total_requests} requests done`) : null,
    e.arms.length
      ? table(["Arm", "Model", "Eval loss", "Perplexity", ...checks, "Output tokens", "Latency", "Tokens/s"],
          rows, { id: "arms" })
      : null,
    h("h2", {}, "Report"),
    report,
  );
  if (e.status !== "succeeded") {
    replace(report, h("p", { class: "muted" }, "The report comes when the evaluation has succeeded."));
    return;
  }
  try {
    const html = await text(`/v1/evaluations/${id}/report.html`);
    replace(report, h("iframe", { sandbox: "", srcdoc: html, title: "evaluation report", class: "report-frame" }));
  } catch (error) {
    replace(report, errorBox(error));
  }
}
