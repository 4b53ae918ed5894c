// The Playground's wiring: sign-in, the two settings panels, Generate, Compare and Clear.

import { Api, ApiError, apiBase, describe } from "./api.js";
import { formatInt, h, replace } from "./dom.js";
import { createPanel } from "./panel.js";
import { createRun } from "./results.js";
import { patchesFor } from "./schema.js";
import { forgetKey, loadKey, saveKey } from "./session.js";
import { createPanelTabs } from "./tabs.js";

// Progress comes from the task's event stream; should the stream be cut (a proxy that buffers
// or times out), long-polls of this length take over: the server answers at once on a status
// change, otherwise after this many seconds with fresh progress.
const WAIT_SECONDS = 2;

const $ = (id) => document.getElementById(id);
const base = apiBase();
const state = { api: null, models: [], panels: [], tabs: null, compare: false, jobs: new Set() };

// ---------------------------------------------------------------- sign-in

function showSignin(message = null) {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message ?? "";
  $("signin-key").value = "";
  $("signin-key").focus();
}

async function signIn(key) {
  const api = new Api(base, key);
  const models = await api.models();
  state.api = api;
  state.models = models;
  saveKey(key);
  startApp();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("signin-key").value.trim();
  if (!key) return;
  const button = $("signin-submit");
  button.disabled = true;
  button.textContent = "Checking key…";
  try {
    await signIn(key);
  } catch (error) {
    const info = describe(error);
    showSignin(error instanceof ApiError && error.status === 401
      ? `This key was refused: ${error.message} (HTTP 401).`
      : `${info.title}: ${info.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
});

$("signout").addEventListener("click", () => {
  clearCanvas();
  forgetKey();
  state.api = null;
  showSignin();
});

// ---------------------------------------------------------------- layout

function emptyState() {
  return h("div", { class: "empty" },
    h("div", { class: "empty-mark", "aria-hidden": "true" }),
    h("h2", {}, "What will you make?"),
    h("p", {}, "Pick a model on the left, describe an image below and press Generate."),
    h("ul", { class: "empty-tips" },
      h("li", {}, h("kbd", {}, "Ctrl"), " + ", h("kbd", {}, "Enter"), " generates"),
      h("li", {}, h("strong", {}, "Compare"), " runs one prompt through two models"),
      h("li", {}, h("strong", {}, "UI / API"), " turns a result into curl or Python")));
}

function updateEstimate() {
  const active = state.compare ? state.panels : state.panels.slice(0, 1);
  let total = 0;
  for (const panel of active) {
    const e = panel.estimate();
    if (!e) {
      $("estimate").textContent = "";
      return;
    }
    total += patchesFor(e.width, e.height, e.count);
  }
  $("estimate").textContent = `≈ ${formatInt(total)} patches`;
}

// A panel's model or settings changed: the estimate and the model name on its tab follow.
function panelChanged() {
  updateEstimate();
  state.tabs?.refresh();
}

function startApp() {
  $("signin").hidden = true;
  $("app").hidden = false;
  const textFirst = state.models.find((m) => m.task === "text-to-image") ?? state.models[0];
  const other = state.models.find((m) => m !== textFirst) ?? textFirst;
  state.panels = [
    createPanel({ letter: "A", models: state.models, selected: textFirst?.model_name, api: state.api, onChange: panelChanged }),
    createPanel({ letter: "B", models: state.models, selected: other?.model_name, api: state.api, onChange: panelChanged }),
  ];
  state.tabs = createPanelTabs(state.panels);
  replace($("sidebar"), state.tabs.el, state.panels.map((p) => p.el));
  $("compare").checked = false;
  setCompare(false);
  clearCanvas();
  $("prompt").focus();
}

function setCompare(on) {
  state.compare = on;
  state.tabs.enable(on);
  // Turning Compare on opens tab B: the panel that just appeared is the one to set up next.
  // Off, panel A is the only one, as before Compare.
  state.tabs.select(on ? 1 : 0);
  updateEstimate();
}

$("compare").addEventListener("change", (event) => setCompare(event.target.checked));

function clearCanvas() {
  for (const controller of state.jobs) controller.abort();
  state.jobs.clear();
  replace($("canvas"), emptyState());
}

$("clear").addEventListener("click", clearCanvas);

// ---------------------------------------------------------------- lightbox and download

async function download(url, name) {
  try {
    const response = await fetch(url, { credentials: "omit" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blobUrl = URL.createObjectURL(await response.blob());
    const link = h("a", { href: blobUrl, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(blobUrl), 10_000);
  } catch {
    // Another origin without CORS: let the browser open it instead.
    window.open(url, "_blank", "noopener");
  }
}

function openFull(url, caption, name) {
  $("lightbox-image").src = url;
  $("lightbox-image").alt = caption;
  $("lightbox-caption").textContent = caption;
  $("lightbox-open").href = url;
  $("lightbox-download").onclick = () => download(url, name);
  $("lightbox").showModal();
}

$("lightbox").addEventListener("click", (event) => {
  if (event.target === $("lightbox")) $("lightbox").close();
});

const hooks = { base, open: openFull, download };

// ---------------------------------------------------------------- generate

// Generate stays disabled while requests are being sent, so a double click makes one run.
let sending = 0;
function setSending(delta) {
  sending += delta;
  $("generate").disabled = sending > 0;
}

async function runOne(panel, prompt, view, controller) {
  panel.clearErrors();
  const started = performance.now();
  let sent = false;
  const submitted = () => {
    if (!sent) setSending(-1);
    sent = true;
  };
  setSending(1);
  try {
    const request = await panel.buildRequest(prompt);
    view.setRequest(request.kind, request.body);
    const jobId = await state.api.submit(request.kind, request.body, controller.signal);
    submitted();
    view.offerCancel(() => state.api.cancel(jobId));
    view.setStatus("queued");
    for await (const task of state.api.events(jobId, controller.signal)) {
      // The finished task is read once more by a poll: it carries base64 results if asked.
      if (task.status === "completed" || task.status === "failed" || task.status === "cancelled") break;
      view.progress(task);
    }
    for (;;) {
      const { task, seed } = await state.api.task(jobId, WAIT_SECONDS, controller.signal);
      if (task.status === "completed") {
        view.complete(task, seed, request, (performance.now() - started) / 1000);
        return;
      }
      if (task.status === "cancelled") {
        view.cancelled(task);
        return;
      }
      if (task.status === "failed") {
        view.fail(new Error(task.error?.message ?? "the job failed without a reason"), "The job failed");
        return;
      }
      view.progress(task);
    }
  } catch (error) {
    submitted();
    if (error.name === "AbortError") return;
    view.fail(error);
    // A control to point at in the panel behind the other tab: show that panel first.
    if (state.compare && error.field && error.field !== "prompt") state.tabs.select(state.panels.indexOf(panel));
    panel.markError(error.field);
    if (error.field === "prompt") $("prompt").classList.add("invalid");
  }
}

async function generate() {
  const prompt = $("prompt").value.trim();
  $("prompt").classList.remove("invalid");
  if (!prompt) {
    $("prompt").classList.add("invalid");
    $("prompt").focus();
    return;
  }
  const panels = state.compare ? state.panels : state.panels.slice(0, 1);
  const run = createRun({
    prompt,
    entries: panels.map((p) => ({ letter: p.letter, modelName: p.model()?.model_name ?? "no model" })),
    hooks,
  });
  $("canvas").querySelector(".empty")?.remove();
  $("canvas").prepend(run.el);
  $("canvas").scrollTo({ top: 0, behavior: "smooth" });
  const controller = new AbortController();
  state.jobs.add(controller);
  await Promise.all(panels.map((panel, i) => runOne(panel, prompt, run.views[i], controller)));
  state.jobs.delete(controller);
}

$("prompt-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (sending === 0) generate();
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    if (sending === 0) generate();
  }
});

$("prompt").addEventListener("input", () => {
  const prompt = $("prompt");
  prompt.classList.remove("invalid");
  prompt.style.height = "auto";
  prompt.style.height = `${Math.min(prompt.scrollHeight, 200)}px`;
});

// ---------------------------------------------------------------- start

const saved = loadKey();
if (saved) {
  signIn(saved).catch((error) => {
    // Only a refused key is forgotten; a server that is down may be back in a moment.
    if (error instanceof ApiError && error.status === 401) forgetKey();
    const info = describe(error);
    showSignin(`${info.title}: ${info.message}`);
  });
} else {
  showSignin();
}
