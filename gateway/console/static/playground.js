// Playground: the same input to the base model and to adapters, each answer streamed into
// its own column side by side, each token showing its log-probability (and the likeliest
// alternatives) on hover. An adapter's template fields go through TGI's /generate_stream
// with `fields`; chat messages through OpenAI's /v1/chat/completions.

import { events, get, post } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

const TOP = 5;

function tokenSpan(text, logprob, alternatives) {
  const lines = [`logprob ${logprob.toFixed(3)}  (p ${Math.exp(logprob).toFixed(3)})`];
  for (const a of alternatives) lines.push(`${JSON.stringify(a.text)}  ${a.logprob.toFixed(3)}`);
  return h("span", { class: "token", title: lines.join("\n"), "data-logprob": logprob.toFixed(4) }, text);
}

function tgiParameters(adapterId, sampling) {
  const p = { max_new_tokens: sampling.maxNewTokens, details: true, top_n_tokens: TOP };
  if (adapterId) p.adapter_id = adapterId;
  if (sampling.temperature > 0) {
    Object.assign(p, { do_sample: true, temperature: sampling.temperature, top_p: sampling.topP });
  }
  if (sampling.seed !== null) p.seed = sampling.seed;
  return p;
}

// The base model has no template: it gets the prompt the adapter's template renders from
// the fields (a one-token generation with the full text returned, less that token).
async function renderedPrompt(adapterId, fields) {
  const answer = await post("/generate", {
    fields,
    parameters: { adapter_id: adapterId, max_new_tokens: 1, return_full_text: true, details: true },
  });
  const tail = answer.details.tokens.map((t) => (t.special ? "" : t.text)).join("");
  const full = answer.generated_text;
  return full.endsWith(tail) ? full.slice(0, full.length - tail.length) : full;
}

async function streamTgi(output, body, signal) {
  for await (const event of events("POST", "/generate_stream", body, signal)) {
    if (event.token.special) continue;
    output.append(tokenSpan(event.token.text, event.token.logprob, event.top_tokens || []));
  }
}

async function streamChat(output, body, signal) {
  for await (const chunk of events("POST", "/v1/chat/completions", body, signal)) {
    const choice = chunk.choices?.[0];
    if (!choice) continue;
    const logprobs = choice.logprobs?.content || [];
    if (logprobs.length) {
      for (const t of logprobs) {
        const alternatives = (t.top_logprobs || []).map((a) => ({ text: a.token, logprob: a.logprob }));
        output.append(tokenSpan(t.token, t.logprob, alternatives));
      }
    } else if (choice.delta?.content) {
      output.append(choice.delta.content);
    }
  }
}

export async function playgroundPage(ctx) {
  const [models, adapters] = await Promise.all([get("/v1/models"), get("/v1/adapters")]);
  const base = models.data.find((m) => !m.parent);
  const names = models.data.filter((m) => m.parent).map((m) => m.id);
  // The template fields of each name's newest version (what a bare name means).
  const fieldsOf = {};
  for (const a of [...adapters.data].sort((x, y) => Number(x.version) - Number(y.version))) {
    fieldsOf[a.name] = a.template_fields;
  }

  const choices = [{ id: "", label: `${base.id} (base)` }, ...names.map((n) => ({ id: n, label: n }))];
  const picks = choices.map((c, i) =>
    h("label", { class: "pick" },
      h("input", { type: "checkbox", value: c.id, checked: i < 2, "data-model": c.id || "base" }),
      " ", c.label));
  const chosen = () => picks.map((p) => p.firstChild).filter((box) => box.checked).map((box) => box.value);

  const modeSelect = h("select", { id: "mode" },
    h("option", { value: "fields" }, "the adapter's template fields"),
    h("option", { value: "prompt" }, "a raw prompt"),
    h("option", { value: "chat" }, "chat messages"));
  const inputs = h("div", { id: "inputs" });
  const drawInputs = () => {
    const mode = modeSelect.value;
    if (mode === "fields") {
      const adapter = chosen().find((id) => id);
      const fields = adapter ? fieldsOf[adapter] || [] : [];
      replace(inputs, fields.length
        ? fields.map((f) => h("label", { class: "field" }, f, h("textarea", { rows: 2, "data-field": f })))
        : h("p", { class: "muted" }, "Pick an adapter with a prompt template (a chat adapter takes messages)."));
    } else if (mode === "prompt") {
      replace(inputs, h("textarea", { id: "prompt", rows: 5, placeholder: "The prompt, as the model sees it" }));
    } else {
      replace(inputs,
        h("label", { class: "field" }, "system", h("textarea", { rows: 2, "data-role": "system" })),
        h("label", { class: "field" }, "user", h("textarea", { rows: 4, "data-role": "user" })));
    }
  };
  modeSelect.addEventListener("change", drawInputs);
  for (const p of picks) p.firstChild.addEventListener("change", drawInputs);

  const number = (id, label, value, attrs) =>
    h("label", {}, label, " ", h("input", { id, type: "number", value, ...attrs }));
  const sampling = h("div", { class: "sampling" },
    number("max-new-tokens", "max new tokens", 48, { min: 1, max: 2048 }),
    number("temperature", "temperature (0 = greedy)", 0, { min: 0, max: 5, step: 0.1 }),
    number("top-p", "top p", 0.95, { min: 0.01, max: 1, step: 0.01 }),
    number("seed", "seed", "", { min: 0, placeholder: "none" }));
  const readSampling = () => {
    const value = (id) => document.getElementById(id).value;
    return {
      maxNewTokens: Number(value("max-new-tokens")) || 48,
      temperature: Number(value("temperature")) || 0,
      topP: Number(value("top-p")) || 1,
      seed: value("seed") === "" ? null : Number(value("seed")),
    };
  };

  const outputs = h("div", { id: "outputs", class: "side-by-side" });
  let running = null;
  const run = async () => {
    if (running) running.abort();
    running = new AbortController();
    const signal = AbortSignal.any([running.signal, ctx.signal]);
    const picked = chosen();
    const s = readSampling();
    const mode = modeSelect.value;
    replace(outputs);
    const panes = picked.map((id) => {
      const text = h("div", { class: "output", "data-output": id || "base" });
      const status = h("p", { class: "muted" }, "…");
      outputs.append(h("section", { class: "pane" }, h("h3", {}, id || `${base.id} (base)`), text, status));
      return { id, text, status };
    });
    const fields = Object.fromEntries(
      [...inputs.querySelectorAll("[data-field]")].map((t) => [t.dataset.field, t.value]));
    const templateAdapter = picked.find((id) => id);
    let basePrompt = null;
    await Promise.all(panes.map(async (pane) => {
      try {
        if (mode === "chat") {
          const messages = [...inputs.querySelectorAll("[data-role]")]
            .filter((t) => t.value.trim())
            .map((t) => ({ role: t.dataset.role, content: t.value }));
          const body = {
            model: pane.id || base.id, messages, stream: true, logprobs: true, top_logprobs: TOP,
            max_tokens: s.maxNewTokens, temperature: s.temperature, top_p: s.topP,
          };
          if (s.seed !== null) body.seed = s.seed;
          await streamChat(pane.text, body, signal);
        } else {
          const body = { parameters: tgiParameters(pane.id, s) };
          if (mode === "prompt") body.inputs = document.getElementById("prompt").value;
          else if (pane.id) body.fields = fields;
          else {
            if (!templateAdapter) throw new Error("pick an adapter whose template fills the fields");
            basePrompt ??= renderedPrompt(templateAdapter, fields);
            body.inputs = await basePrompt;
          }
          await streamTgi(pane.text, body, signal);
        }
        replace(pane.status, "done");
        pane.status.dataset.done = "true";
      } catch (error) {
        if (!signal.aborted) replace(pane.status, errorBox(error));
      }
    }));
  };

  replace(
    ctx.view,
    h("h1", {}, "Playground"),
    h("section", {}, h("h2", {}, "Models"), h("div", { id: "picks" }, picks)),
    h("section", {}, h("h2", {}, "Input"), h("label", {}, "Write ", modeSelect), inputs),
    h("section", {}, h("h2", {}, "Sampling"), sampling),
    h("p", {}, h("button", { id: "generate", onclick: run }, "Generate")),
    outputs,
  );
  drawInputs();
}
