// The page: choose or drop DICOM files, upload each with progress, show each result.

import { ApiError, fetchHealth, getApiKey, setApiKey, uploadDicom } from "./api.js";
import { announce, clear, h } from "./dom.js";
import { bytes } from "./format.js";
import { isDemoResult, renderResult } from "./result.js";
import { initSamples } from "./samples.js";

const MAX_PARALLEL = 2;

const dom = {
  input: document.getElementById("file-input"),
  dropzone: document.getElementById("dropzone"),
  list: document.getElementById("results-list"),
  empty: document.getElementById("results-empty"),
  clearAll: document.getElementById("clear-all"),
  banners: document.getElementById("banners"),
  health: document.getElementById("health"),
  healthText: document.getElementById("health-text"),
};

const jobs = new Set();
const queue = [];
let running = 0;
let jobCount = 0;

// ------------------------------------------------------------------ jobs

class Job {
  constructor(file) {
    this.id = `job-${++jobCount}`;
    this.file = file;
    this.request = null;
    this.result = null;
    this.view = null;

    const titleId = `${this.id}-title`;
    this.status = h("p", { class: "card__status", dataset: { testid: "status" } });
    this.progress = h("progress", { class: "card__progress", max: "1", value: "0", "aria-labelledby": titleId });
    this.cancelButton = h("button", {
      type: "button", class: "btn btn--ghost btn--small", text: "Cancel",
      "aria-label": `Cancel upload of ${file.name}`, onclick: () => this.cancel(),
    });
    this.removeButton = h("button", {
      type: "button", class: "btn btn--ghost btn--small", text: "Remove",
      "aria-label": `Remove ${file.name}`, onclick: () => this.remove(),
    });
    this.body = h("div", { class: "card__body" });
    this.element = h("li", { class: "card", id: this.id, "aria-labelledby": titleId }, [
      h("div", { class: "card__head" }, [
        h("div", { class: "card__file" }, [
          h("h3", { class: "card__title", id: titleId, text: file.name || "(unnamed file)" }),
          h("span", { class: "card__size muted", text: bytes(file.size) }),
        ]),
        this.status,
        h("div", { class: "card__actions" }, [this.cancelButton, this.removeButton]),
      ]),
      this.progress,
      this.body,
    ]);
    this.setState("queued", "Waiting…");
  }

  setState(state, text) {
    this.state = state;
    this.element.dataset.state = state;
    this.status.textContent = text;
    const active = state === "uploading" || state === "analysing" || state === "queued";
    this.progress.hidden = !active;
    this.cancelButton.hidden = !active;
  }

  start() {
    running += 1;
    clear(this.body);
    this.destroyView();
    this.progress.value = 0;
    this.setState("uploading", "Uploading 0%");
    announce(`${this.file.name}: uploading.`);
    this.request = uploadDicom(this.file, {
      onProgress: (fraction) => {
        if (this.state !== "uploading") return;
        this.progress.value = fraction;
        this.status.textContent = `Uploading ${Math.round(fraction * 100)}%`;
      },
      onSent: () => {
        if (this.state !== "uploading") return;
        this.progress.removeAttribute("value"); // indeterminate while the models run
        this.setState("analysing", "Analysing…");
        announce(`${this.file.name}: uploaded, analysing.`);
      },
    });
    this.request.promise
      .then((result) => this.showResult(result))
      .catch((error) => this.showError(error))
      .finally(() => {
        this.request = null;
        running -= 1;
        pump();
      });
  }

  /** Whether keyboard focus sits on a control this card is about to hide or remove. */
  focusWillBeLost() {
    const active = document.activeElement;
    return active === this.cancelButton || (active && this.body.contains(active));
  }

  showResult(result) {
    const refocus = this.focusWillBeLost();
    this.result = result;
    this.view = renderResult(result, this.file.name, { file: this.file });
    this.body.replaceChildren(this.view.element);
    const seconds = result.timings_ms && typeof result.timings_ms.total === "number"
      ? ` in ${(result.timings_ms.total / 1000).toFixed(2)} s` : "";
    this.setState("done", `Analysed${seconds}`);
    if (refocus) this.removeButton.focus();
    this.element.classList.toggle("card--demo", isDemoResult(result));
    const probability = typeof result.abnormal_probability === "number"
      ? result.abnormal_probability.toFixed(3) : "unknown";
    announce(`${this.file.name}: ${String(result.diagnosis)}, ensemble probability ${probability}.`);
  }

  showError(error) {
    const apiError = error instanceof ApiError ? error : new ApiError(String(error && error.message || error));
    if (apiError.kind === "abort" && this.state === "removed") return;
    const refocus = this.focusWillBeLost();
    this.lastStatus = apiError.status;
    this.setState("error", apiError.kind === "abort" ? "Cancelled" : "Failed");
    const retry = h("button", {
      type: "button", class: "btn btn--primary btn--small", text: "Retry",
      "aria-label": `Retry ${this.file.name}`, onclick: () => this.retry(),
    });
    const details = [];
    if (apiError.status) details.push(`HTTP ${apiError.status}`);
    if (apiError.requestId) details.push(`request ${apiError.requestId}`);
    this.body.replaceChildren(h("div", { class: "error", role: "alert" }, [
      h("div", { class: "error__text" }, [
        h("p", { class: "error__message", text: apiError.message, dataset: { testid: "error-message" } }),
        details.length ? h("p", { class: "error__details mono muted small", text: details.join(" · ") }) : null,
      ]),
      retry,
    ]));
    if (apiError.status === 401) this.body.append(this.apiKeyForm());
    if (refocus) retry.focus();
    if (apiError.status === 503 || apiError.status === 504 || apiError.kind === "network") refreshHealth();
  }

  /** The gateway wants an API key: ask for it once, keep it for this tab only. */
  apiKeyForm() {
    const inputId = `${this.id}-api-key`;
    const input = h("input", {
      id: inputId, type: "password", class: "text-input", autocomplete: "off", spellcheck: "false",
      value: getApiKey(), required: true,
    });
    const form = h("form", { class: "api-key" }, [
      h("label", { for: inputId, text: "API key" }),
      input,
      h("button", { type: "submit", class: "btn btn--primary btn--small", text: "Save key and retry" }),
      h("p", { class: "muted small api-key__note", text: "Kept in this browser tab only (session storage)." }),
    ]);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setApiKey(input.value.trim());
      for (const job of jobs) {
        if (job !== this && job.state === "error" && job.lastStatus === 401) job.retry();
      }
      this.retry();
    });
    return form;
  }

  retry() {
    this.setState("queued", "Waiting…");
    clear(this.body);
    enqueue(this);
    const focusTarget = this.cancelButton.hidden ? this.removeButton : this.cancelButton;
    focusTarget.focus();
  }

  cancel() {
    const index = queue.indexOf(this);
    if (index >= 0) {
      queue.splice(index, 1);
      this.showError(new ApiError("Upload cancelled.", { kind: "abort" }));
    } else if (this.request) {
      this.request.abort();
    }
  }

  destroyView() {
    if (this.view) this.view.destroy();
    this.view = null;
  }

  remove() {
    const wasActive = this.state === "uploading" || this.state === "analysing";
    const index = queue.indexOf(this);
    if (index >= 0) queue.splice(index, 1);
    this.state = "removed";
    if (wasActive && this.request) this.request.abort();
    this.destroyView();
    const next = this.element.nextElementSibling || this.element.previousElementSibling;
    this.element.remove();
    jobs.delete(this);
    updateEmpty();
    announce(`${this.file.name} removed.`);
    const focusable = next && next.querySelector("button:not([hidden])");
    (focusable || dom.dropzone).focus();
  }
}

function enqueue(job) {
  queue.push(job);
  pump();
}

function pump() {
  while (running < MAX_PARALLEL && queue.length) queue.shift().start();
}

function addFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  for (const file of files) {
    const job = new Job(file);
    jobs.add(job);
    dom.list.prepend(job.element);
    enqueue(job);
  }
  updateEmpty();
  announce(`${files.length} file${files.length === 1 ? "" : "s"} added.`);
}

function updateEmpty() {
  dom.empty.hidden = jobs.size > 0;
  dom.clearAll.hidden = jobs.size === 0;
}

// ---------------------------------------------------------- file choosing

dom.dropzone.addEventListener("click", () => dom.input.click());
dom.input.addEventListener("change", () => {
  addFiles(dom.input.files);
  dom.input.value = ""; // choosing the same file again fires change again
});

initSamples({
  container: document.getElementById("samples"),
  list: document.getElementById("samples-list"),
  note: document.getElementById("samples-note"),
  onFile: (file) => addFiles([file]),
});

let dragDepth = 0;
function hasFiles(event) {
  return event.dataTransfer && [...event.dataTransfer.types].includes("Files");
}
document.addEventListener("dragenter", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  dragDepth += 1;
  dom.dropzone.classList.add("is-dragover");
});
document.addEventListener("dragover", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
document.addEventListener("dragleave", (event) => {
  if (!hasFiles(event)) return;
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) dom.dropzone.classList.remove("is-dragover");
});
document.addEventListener("drop", (event) => {
  if (!hasFiles(event)) return;
  event.preventDefault(); // never let the browser navigate to the dropped file
  dragDepth = 0;
  dom.dropzone.classList.remove("is-dragover");
  addFiles(event.dataTransfer.files);
});

dom.clearAll.addEventListener("click", () => {
  for (const job of [...jobs]) {
    job.state = "removed";
    if (job.request) job.request.abort();
    job.destroyView();
    job.element.remove();
  }
  jobs.clear();
  queue.length = 0;
  updateEmpty();
  announce("All results cleared.");
  dom.dropzone.focus();
});

// ----------------------------------------------------------------- health

function banner(kind, text, testid) {
  return h("div", { class: ["banner", `banner--${kind}`], role: "note", dataset: { testid, source: "health" } }, [
    h("span", { class: "banner__text", text }),
  ]);
}

const BUILD_POLL_MS = 5000;
let buildPoll = null;  // one timer, however often the health is refreshed

/** The banner of a model bundle being built (spine serve on a fresh install), or null. */
function buildBanner(build) {
  if (!build || build.state === "done") return null;
  if (build.state === "failed") {
    return banner("error", `The ${String(build.bundle)} model bundle could not be built; `
      + "no analysis can run (see the log of spine serve).", "health-build");
  }
  const percent = Math.round(Number(build.fraction) * 100);
  const eta = Number(build.eta_s);
  const left = Number.isFinite(eta) && build.eta_s !== null
    ? `, about ${eta < 90 ? `${Math.max(5, Math.round(eta / 5) * 5)} s` : `${Math.round(eta / 60)} min`} left`
    : "";
  const text = `Building the ${String(build.bundle)} model bundle: ${percent}% (${String(build.stage)})${left}. `
    + "Uploads are answered once it is loaded.";
  return h("div", { class: ["banner", "banner--warn"], role: "status", dataset: { testid: "health-build", source: "health" } }, [
    h("span", { class: "banner__text", text }),
    h("progress", { class: "banner__progress", max: "100", value: String(percent) }),
  ]);
}

async function refreshHealth() {
  let health;
  try {
    health = await fetchHealth();
  } catch (error) {
    dom.health.dataset.state = "unhealthy";
    dom.healthText.textContent = "Gateway unreachable";
    dom.banners.replaceChildren(banner("error", `Health check failed: ${error.message}`, "health-error"));
    return;
  }
  const status = String(health.status || "unknown");
  dom.health.dataset.state = status;
  const classifierBundle = health.services && health.services.classifier && health.services.classifier.model_bundle;
  const parts = [status, health.device ? String(health.device) : null];
  if (classifierBundle && classifierBundle.name) parts.push(`bundle ${String(classifierBundle.name)}`);
  dom.healthText.textContent = parts.filter(Boolean).join(" · ");
  dom.health.title = `Models loaded: ${health.models_loaded ? "yes" : "no"}`;

  const banners = [];
  const build = buildBanner(health.bundle_build);
  if (build) {
    banners.push(build);
    dom.healthText.textContent = `building the ${String(health.bundle_build.bundle)} bundle`;
    dom.health.dataset.state = "degraded";  // up, but no analysis until it is loaded
    window.clearTimeout(buildPoll);
    buildPoll = window.setTimeout(refreshHealth, BUILD_POLL_MS);  // until it is loaded
  }
  const warnings = Array.isArray(health.warnings) ? health.warnings.map(String) : [];
  const bundleKind = classifierBundle && classifierBundle.kind;
  const demo = Boolean(health.demo) || bundleKind === "demo" || bundleKind === "untrained";
  if (demo) {
    banners.push(banner("demo",
      "Demo model bundle in use: the weights were trained on synthetic phantoms (or not at all). "
      + "Results show that the pipeline works; they are not a medical result.", "health-demo"));
  }
  for (const warning of warnings) banners.push(banner("warn", warning, "health-warning"));
  dom.banners.replaceChildren(...banners);
}

document.documentElement.dataset.ready = "true";
refreshHealth().finally(() => { dom.health.dataset.loaded = "true"; });
