// New job: pick or upload a data file, start from an example spec (specs.json, the
// examples/ specs without their data path) and edit it, run the validation dry run and
// read its row-numbered report, then start the job.

import { ApiError, get, post } from "./api.js";
import { errorBox, h, replace, table } from "./dom.js";

export async function newJobPage(ctx) {
  const [files, examples] = await Promise.all([
    get("/v1/files"),
    fetch("specs.json").then((r) => r.json()),
  ]);
  const fileSelect = h("select", { id: "training-file" });
  const fillFiles = (list, chosen) => {
    replace(
      fileSelect,
      h("option", { value: "" }, "— choose a data file —"),
      list
        .filter((f) => f.purpose === "fine-tune")
        .map((f) => h("option", { value: f.id, selected: f.id === chosen }, `${f.filename} (${f.id})`)),
    );
  };
  fillFiles(files.data);

  const uploadStatus = h("span", { id: "upload-status" });
  const fileInput = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,.csv,.parquet" });
  const upload = async () => {
    if (!fileInput.files.length) return;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", fileInput.files[0]);
    replace(uploadStatus, "Uploading…");
    try {
      const info = await post("/v1/files", form);
      fillFiles((await get("/v1/files")).data, info.id);
      replace(uploadStatus, `Uploaded as ${info.id}.`);
      invalidate();
    } catch (error) {
      replace(uploadStatus, errorBox(error));
    }
  };

  const exampleSelect = h(
    "select",
    { id: "example" },
    examples.map((e, i) => h("option", { value: i }, e.title)),
  );
  const specText = h("textarea", { id: "spec", rows: 18, spellcheck: "false" });
  const showExample = () => {
    specText.value = JSON.stringify(examples[exampleSelect.value].spec, null, 2);
    invalidate();
  };

  const report = h("div", { id: "validation" });
  const start = h("button", { id: "start-job", disabled: true }, "Start job");
  let validated = null; // the body the last successful validation checked

  function invalidate() {
    validated = null;
    start.disabled = true;
  }

  function body() {
    let spec;
    try {
      spec = JSON.parse(specText.value);
    } catch (error) {
      throw new ApiError(0, `the spec is not valid JSON: ${error.message}`, "tuneyard");
    }
    if (!fileSelect.value) throw new ApiError(0, "choose or upload a data file first", "training_file");
    return { training_file: fileSelect.value, tuneyard: spec };
  }

  const validate = async () => {
    invalidate();
    replace(report, h("p", { class: "muted" }, "Validating…"));
    try {
      const request = body();
      const answer = await post("/v1/fine_tuning/jobs/validate", request);
      replace(report, validationReport(answer));
      if (answer.ok) {
        validated = JSON.stringify(request);
        start.disabled = !ctx.write;
      }
    } catch (error) {
      replace(report, errorBox(error), error.param ? h("p", {}, `field: ${error.param}`) : null);
    }
  };

  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const request = body();
      if (JSON.stringify(request) !== validated) {
        await validate();
        return;
      }
      const job = await post("/v1/fine_tuning/jobs", request);
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      report.append(errorBox(error));
      start.disabled = false;
    }
  });
  exampleSelect.addEventListener("change", showExample);
  specText.addEventListener("input", invalidate);
  fileSelect.addEventListener("change", invalidate);
  fileInput.addEventListener("change", upload);
  showExample();

  replace(
    ctx.view,
    h("h1", {}, "New fine-tuning job"),
    h("section", {},
      h("h2", {}, "1. Data"),
      h("label", {}, "File ", fileSelect),
      ctx.write ? h("label", { class: "upload" }, "or upload ", fileInput, " ", uploadStatus) : null),
    h("section", {},
      h("h2", {}, "2. Spec"),
      h("label", {}, "Start from ", exampleSelect),
      h("p", { class: "muted" }, "Any job spec field (JSON); the data file above is its data."),
      specText),
    h("section", {},
      h("h2", {}, "3. Check, then start"),
      h("button", { id: "validate", onclick: validate }, "Validate"),
      " ",
      ctx.write ? start : h("span", { class: "muted" }, "Starting a job needs a project key or an admin key."),
      report),
  );
}

function validationReport(r) {
  if (!r.ok) {
    const line = r.error.line ? `line ${r.error.line}` : "";
    const where = line && !r.error.message.includes(line) ? `${line}: ` : "";
    return h("div", { class: "report bad", "data-ok": "false" },
      h("p", { class: "error" }, where, r.error.message),
      r.error.param ? h("p", {}, `field: ${r.error.param}`) : null,
      warnings(r.warnings));
  }
  const t = r.tokens || {};
  return h("div", { class: "report good", "data-ok": "true" },
    h("p", {}, `OK: ${r.rows} rows (${r.train_rows} to train on, ${r.eval_rows} to evaluate) for ${r.base_model}.`),
    table(["tokens", "min", "mean", "p50", "p95", "max"], [
      h("tr", {}, h("td", {}, "per row"), [t.min, Number(t.mean).toFixed(1), t.p50, t.p95, t.max].map((v) => h("td", {}, v))),
    ]),
    r.too_long
      ? h("p", { class: "warn" }, `${r.too_long} rows are longer than max_seq_length, e.g. lines ${r.too_long_lines.join(", ")}.`)
      : null,
    warnings(r.warnings));
}

function warnings(list) {
  return list.length ? h("ul", { class: "warnings" }, list.map((w) => h("li", {}, w))) : null;
}
