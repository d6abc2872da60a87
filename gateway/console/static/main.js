// The console's shell: the API key form, what the key may do (GET /v1/permissions), the
// project an admin key looks at (a project key sees only its own), and
// the hash router that draws one page at a time into <main>. Leaving a page aborts what it
// still streams (its `signal`).

import { ApiError, apiKey, get, project, setApiKey, setProject } from "./api.js";
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

// What this key may do: {admin, write, project, keysRequired}, or null when the key is
// missing or refused.
async function permissions() {
  try {
    const answer = await get("/v1/permissions");
    return {
      admin: answer.admin,
      write: answer.write,
      project: answer.project,
      keysRequired: answer.keys_required,
    };
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
  // Each page draws into its own element, swapped in now: a page left while it still
  // waits for an answer draws into one that is no longer shown, never over the next page.
  const pageView = h("div", { class: "page" }, h("p", { class: "muted" }, "Loading…"));
  replace(view, pageView);
  try {
    const allowed = await permissions();
    if (signal.aborted) return;
    if (!allowed) {
      role.textContent = "";
      replace(pageView, h("p", { class: "notice" }, "This gateway needs an API key: enter it above."));
      document.getElementById("key").focus();
      return;
    }
    role.textContent = !allowed.keysRequired
      ? "open"
      : allowed.admin
        ? "admin key"
        : `key · ${allowed.project}${allowed.write ? "" : " (read only)"}`;
    await showProjects(allowed.admin);
    if (signal.aborted) return;
    const ctx = { admin: allowed.admin, write: allowed.write, signal, view: pageView };
    await page(ctx, ...pattern.exec(hash).slice(1));
  } catch (error) {
    if (signal.aborted) return;
    replace(pageView, errorBox(error));
  }
}

// An admin key picks the project it looks at, or every project.
async function showProjects(admin) {
  const select = document.getElementById("project");
  select.hidden = !admin;
  if (!admin) return;
  const listed = await get("/v1/organization/projects?limit=100");
  const options = [["", "every project"], ...listed.data.map((p) => [p.id, p.name])];
  select.replaceChildren(
    ...options.map(([id, name]) => h("option", { value: id, selected: id === project() }, name)),
  );
}

document.getElementById("project").addEventListener("change", (event) => {
  setProject(event.target.value);
  route();
});
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  setApiKey(input.value.trim());
  input.value = "";
  route();
});
document.getElementById("forget-key").addEventListener("click", () => {
  setApiKey("");
  setProject("");
  route();
});
window.addEventListener("hashchange", route);
route();
