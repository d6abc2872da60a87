// The console's shell: the API key form, what the key may do (GET /v1/permissions), and
// the hash router that draws one page at a time into <main>. Leaving a page aborts what it
// still streams (its `signal`).

import { ApiError, apiKey, get, setApiKey } from "./api.js";
import { errorBox, h, replace } from "./dom.js";
import { adaptersPage } from "./adapters.js";
import { evaluationPage, evaluationsPage } from "./evaluations.js";
import { jobPage, jobsPage } from "./jobs.js";
import { newJobPage } from "./new_job.js";
import { playgroundPage } from "./playground.js";

const ROUTES = [
  [/^#\/jobs\/([\w.-]+)$/, jobPage, "jobs"],
  [/^#\/jobs$/, jobsPage, "jobs"],
  [/^#\/new$/, newJobPage, "new"],
  [/^#\/adapters$/, adaptersPage, "adapters"],
  [/^#\/playground$/, playgroundPage, "playground"],
  [/^#\/evaluations\/([\w.-]+)$/, evaluationPage, "evaluations"],
  [/^#\/evaluations$/, evaluationsPage, "evaluations"],
];

const view = document.getElementById("view");
const role = document.getElementById("role");
let current = null;

// What this key may do: {admin, keysRequired}, or null when the key is missing or refused.
async function permissions() {
  try {
    const answer = await get("/v1/permissions");
    return { admin: answer.admin, keysRequired: answer.keys_required };
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return null;
    throw error;
  }
}

async function route() {
  if (current) current.abort();
  current = new AbortController();
  const hash = location.hash || "#/jobs";
  const found = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!found) {
    location.hash = "#/jobs";
    return;
  }
  const [pattern, page, name] = found;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
  }
  const signal = current.signal;
  document.getElementById("key").placeholder = apiKey() ? "API key (set)" : "API key";
  replace(view, h("p", { class: "muted" }, "Loading…"));
  try {
    const allowed = await permissions();
    if (signal.aborted) return;
    if (!allowed) {
      role.textContent = "";
      replace(view, h("p", { class: "notice" }, "This gateway needs an API key: enter it above."));
      document.getElementById("key").focus();
      return;
    }
    role.textContent = allowed.keysRequired ? (allowed.admin ? "admin key" : "key") : "open";
    const ctx = { admin: allowed.admin, signal, view };
    await page(ctx, ...pattern.exec(hash).slice(1));
  } catch (error) {
    if (signal.aborted) return;
    replace(view, errorBox(error));
  }
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  setApiKey(input.value.trim());
  input.value = "";
  route();
});
document.getElementById("forget-key").addEventListener("click", () => {
  setApiKey("");
  route();
});
window.addEventListener("hashchange", route);
route();
