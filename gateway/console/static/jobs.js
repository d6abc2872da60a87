// Jobs: the list, and one job's page (live progress and loss chart from its event stream,
// its events, checkpoints, result files and evaluations).

import { events, get, post, request } from "./api.js";
import { LineChart } from "./chart.js";
import { bytes, duration, errorBox, h, number, replace, statusBadge, table, when } from "./dom.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 3000;

function jobDuration(job) {
  const start = job.tuneyard?.started_at || job.created_at;
  const end = job.finished_at || (TERMINAL.has(job.status) ? null : Date.now() / 1000);
  return end ? duration(end - start) : "—";
}

// Call `fn` now and every `ms` until `signal` aborts or `fn` answers false.
async function every(ms, signal, fn) {
  while (!signal.aborted && (await fn()) !== false) {
    await new Promise((resolve) => setTimeout(resolve, ms));
  }
}

export async function jobsPage(ctx) {
  const body = h("div");
  replace(ctx.view, h("h1", {}, "Fine-tuning jobs"), body);
  await every(REFRESH_MS, ctx.signal, async () => {
    const jobs = (await get("/v1/fine_tuning/jobs?limit=100")).data;
    if (ctx.signal.aborted) return false;
    if (!jobs.length) {
      replace(body, h("p", { class: "muted" }, "No jobs yet. ", h("a", { href: "#/new" }, "Start one.")));
    } else {
      const rows = jobs.map((job) =>
        h(
          "tr",
          { dataset: { job: job.id } },
          h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
          h("td", {}, statusBadge(job.status)),
          h("td", {}, job.model),
          h("td", {}, job.tuneyard?.spec?.recipe || "—"),
          h("td", {}, job.fine_tuned_model || job.suffix || "—"),
          h("td", {}, when(job.created_at)),
          h("td", {}, jobDuration(job)),
        ),
      );
      replace(
        body,
        table(["Job", "Status", "Base model", "Recipe", "Adapter", "Created", "Duration"], rows, {
          id: "jobs",
        }),
      );
    }
    return true;
  });
}

function progressView() {
  const bar = h("progress", { id: "progress", max: 1, value: 0 });
  const figures = {};
  const names = ["step", "loss", "eval loss", "tokens/s", "ETA", "memory"];
  const list = h(
    "dl",
    { class: "figures" },
    names.map((name) => [h("dt", {}, name), (figures[name] = h("dd", { "data-figure": name }, "—"))]),
  );
  const update = (m) => {
    if (m.step !== undefined) {
      const total = m.total_steps || m.step || 1;
      bar.max = total;
      bar.value = m.step;
      figures.step.textContent = `${m.step} / ${total}`;
    }
    if (m.loss !== undefined) figures.loss.textContent = number(m.loss);
    if (m.eval_loss !== undefined) figures["eval loss"].textContent = number(m.eval_loss);
    if (m.tokens_per_second !== undefined) figures["tokens/s"].textContent = number(m.tokens_per_second, 0);
    if (m.eta_seconds !== undefined) figures.ETA.textContent = duration(m.eta_seconds);
    if (m.peak_memory_bytes !== undefined) figures.memory.textContent = bytes(Number(m.peak_memory_bytes));
  };
  return { element: h("section", { class: "progress" }, bar, list), update, bar };
}

export async function jobPage(ctx, jobId) {
  const header = h("div");
  const progress = progressView();
  const chart = new LineChart(
    [
      { name: "train loss", color: "#2563eb" },
      { name: "eval loss", color: "#d97706" },
    ],
    "step",
  );
  const eventList = h("ol", { id: "events", class: "events", reversed: true });
  const checkpoints = h("div");
  const results = h("div");
  const evaluations = h("div");
  replace(
    ctx.view,
    header,
    progress.element,
    h("section", {}, h("h2", {}, "Loss"), h("div", { id: "loss-chart" }, chart.element)),
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Events"), eventList),
      h("section", {},
        h("h2", {}, "Checkpoints"), checkpoints,
        h("h2", {}, "Result files"), results,
        h("h2", {}, "Evaluation"), evaluations)),
  );

  let job = null;
  const refresh = async () => {
    job = await get(`/v1/fine_tuning/jobs/${jobId}`);
    if (ctx.signal.aborted) return false;
    drawHeader(ctx, header, job, refresh);
    if (job.status === "succeeded") {
      progress.bar.value = progress.bar.max;  // a job that ends early (max_steps) ends full
    }
    await Promise.all([
      drawCheckpoints(ctx, checkpoints, jobId, refresh),
      drawResults(results, job),
      drawEvaluations(evaluations, jobId),
    ]);
    return true;
  };
  await refresh();

  // The events from the first, then live until the job ends (the stream's [DONE]).
  const watch = async () => {
    for await (const event of events("GET", `/v1/fine_tuning/jobs/${jobId}/events?stream=true`, undefined, ctx.signal)) {
      if (event.type === "metrics") {
        const m = event.data;
        progress.update(m);
        if (m.loss !== undefined) chart.add("train loss", m.step, m.loss);
        if (m.eval_loss !== undefined) chart.add("eval loss", m.step, m.eval_loss);
      }
      if (event.message) {
        eventList.prepend(
          h("li", { class: event.level }, h("time", {}, when(event.created_at)), " ", event.message),
        );
        await refresh();
      }
    }
  };
  try {
    await watch();
  } catch (error) {
    if (ctx.signal.aborted) return;
    eventList.prepend(h("li", { class: "error" }, error.message));
  }
  // Its evaluation (and the links to its report) may still come after the job ends.
  await every(REFRESH_MS, ctx.signal, async () => (await refresh()) && !evaluationsDone(evaluations));
}

function evaluationsDone(element) {
  return !element.querySelector("[data-status=queued], [data-status=running]");
}

function drawHeader(ctx, element, job, refresh) {
  const spec = job.tuneyard?.spec || {};
  const actions = [];
  if (ctx.write && !TERMINAL.has(job.status)) {
    actions.push(
      h("button", {
        id: "cancel-job",
        class: "danger",
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await post(`/v1/fine_tuning/jobs/${job.id}/cancel`);
            await refresh();
          } catch (error) {
            element.append(errorBox(error));
          }
        },
      }, "Cancel"),
    );
  }
  replace(
    element,
    h("h1", {}, job.id, " ", statusBadge(job.status), " ", actions),
    h("dl", { class: "facts" },
      h("dt", {}, "base model"), h("dd", {}, job.model),
      h("dt", {}, "recipe"), h("dd", {}, spec.recipe || "—"),
      h("dt", {}, "adapter"), h("dd", { id: "fine-tuned-model" }, job.fine_tuned_model || spec.adapter_name || "—"),
      h("dt", {}, "created"), h("dd", {}, when(job.created_at)),
      h("dt", {}, "duration"), h("dd", {}, jobDuration(job)),
      h("dt", {}, "trained tokens"), h("dd", {}, job.trained_tokens ?? "—")),
    job.error ? errorBox({ message: `${job.error.code}: ${job.error.message}` }) : null,
  );
}

async function drawCheckpoints(ctx, element, jobId, refresh) {
  const list = (await get(`/v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`)).data;
  if (!list.length) {
    replace(element, h("p", { class: "muted" }, "None saved."));
    return;
  }
  const publish = (c) =>
    h("button", {
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          await post(`/v1/fine_tuning/jobs/${jobId}/checkpoints/${c.step_number}/publish`);
          await refresh();
        } catch (error) {
          element.append(errorBox(error));
        }
      },
    }, "Publish");
  // A succeeded job's last checkpoints are models of their own; publishing one makes it
  // the adapter's next version.
  const rows = list.map((c) =>
    h("tr", { dataset: { step: c.step_number } },
      h("td", {}, c.step_number),
      h("td", {}, number(c.metrics.train_loss)),
      h("td", {}, number(c.metrics.valid_loss)),
      h("td", {}, c.fine_tuned_model_checkpoint || "—"),
      h("td", { class: "published" }, c.tuneyard.published_as || (ctx.write ? publish(c) : "—"))),
  );
  replace(
    element,
    table(["Step", "Train loss", "Valid loss", "Model", "Published as"], rows, { id: "checkpoints" }),
  );
}

async function download(info) {
  const blob = await (await request("GET", `/v1/files/${info.id}/content`)).blob();
  const link = h("a", { href: URL.createObjectURL(blob), download: info.filename });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function drawResults(element, job) {
  if (!job.result_files.length) {
    replace(element, h("p", { class: "muted" }, "None yet."));
    return;
  }
  // File ids, as OpenAI's: each downloads with the key (a plain link could not send it).
  const files = await Promise.all(job.result_files.map((id) => get(`/v1/files/${id}`)));
  replace(
    element,
    h("ul", { id: "result-files" },
      files.map((info) =>
        h("li", {},
          h("a", { href: "#", onclick: (e) => { e.preventDefault(); download(info); } },
            info.filename),
          " ", h("span", { class: "muted" }, bytes(info.bytes)))),
    ),
  );
}

async function drawEvaluations(element, jobId) {
  const all = (await get("/v1/evaluations?limit=100")).data;
  const mine = all.filter((e) => e.spec.job_id === jobId);
  if (!mine.length) {
    replace(element, h("p", { class: "muted" }, "None."));
    return;
  }
  replace(
    element,
    h("ul", {},
      mine.map((e) =>
        h("li", {}, h("a", { href: `#/evaluations/${e.id}` }, e.id), " ", statusBadge(e.status)))),
  );
}
