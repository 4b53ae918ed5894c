// The canvas: one "run" per Generate (one result, or two side by side in Compare). A result
// shows its status and progress while the job runs, then its images and the line beneath
// (model, steps, time taken, patches billed), and flips with "UI / API" to its request as code.

import { describe } from "./api.js";
import { formatInt, h, replace, uid } from "./dom.js";
import { sizeOf } from "./schema.js";
import { KEY_VARIABLE, curlPollSnippet, curlSnippet, openaiSnippet, pythonSnippet } from "./snippets.js";

const STATUS_TEXT = {
  submitting: "Submitting",
  uploading: "Uploading",
  queued: "Queued",
  in_progress: "Generating",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};

function parseTime(text) {
  if (!text) return null;
  // The API writes UTC without an offset, with microseconds; Date wants at most milliseconds.
  const trimmed = text.replace(/(\.\d{3})\d+/, "$1");
  const value = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(trimmed) ? trimmed : `${trimmed}Z`);
  return Number.isNaN(value) ? null : value;
}

export function formatSeconds(seconds) {
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard API needs a secure context; plain http on a LAN address is not one.
    const area = h("textarea", { class: "visually-hidden", readOnly: true }, text);
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

function codeBlock(text, lang, title) {
  const code = h("code", { "data-snippet": lang }, text);
  const button = h("button", { type: "button", class: "btn btn-small copy", "aria-label": `Copy ${title}` }, "Copy");
  button.addEventListener("click", async () => {
    button.textContent = (await copyText(code.textContent)) ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  });
  return h("div", { class: "code" },
    h("div", { class: "code-bar" }, h("span", { class: "code-title" }, title), button),
    h("pre", {}, code));
}

const LANGUAGES = { curl: "curl", python: "Python", openai: "OpenAI SDK" };

/** The API side of a result: a tab per language, rebuilt when the seed becomes known. */
function createApiView(base) {
  const el = h("div", { class: "result-api", hidden: true });
  let lang = "curl";
  let request = null;
  let note = null;

  function render() {
    if (!request) return;
    const tabs = Object.entries(LANGUAGES).map(([name, label]) => h("button", {
      type: "button", role: "tab", class: "tab", "aria-selected": String(name === lang),
      onclick: () => {
        lang = name;
        render();
      },
    }, label));
    let body;
    if (lang === "curl") {
      body = [codeBlock(curlSnippet(base, request.kind, request.body), "curl", `POST /images/${request.kind}`),
        h("p", { class: "hint" }, "It answers ", h("code", {}, "{\"job_id\": …}"),
          ". Set JOB_ID to it and long-poll the task until it is completed:"),
        codeBlock(curlPollSnippet(base), "curl-poll", "GET /images/tasks/{job_id}")];
    } else if (lang === "python") {
      body = [codeBlock(pythonSnippet(base, request.kind, request.body), "python", "Python · requests")];
    } else {
      body = [codeBlock(openaiSnippet(base, request.kind, request.body), "openai", "Python · OpenAI SDK"),
        h("p", { class: "hint" }, "The same request through ", h("code", {}, "/openai/v1"),
          ": one call that returns the images (",
          h("code", {}, "pip install openai"), ").",
          request.kind === "edits" ? " Save the source image as source.png beside the script." : "")];
    }
    replace(el,
      h("div", { class: "tabs", role: "tablist", "aria-label": "Language" }, tabs),
      body,
      h("p", { class: "hint" }, `The key is left out: export ${KEY_VARIABLE}=… first.`,
        note ? ` ${note}` : ""));
  }

  return {
    el,
    set(kind, body, extra = null) {
      request = { kind, body };
      note = extra;
      render();
    },
  };
}

/**
 * One job's view. `hooks` = {base, open(url, caption, name), download(url, name)}.
 */
function createResultView({ letter, modelName, compare, hooks }) {
  const chip = h("span", { class: "chip chip-submitting", role: "status" }, STATUS_TEXT.submitting);
  const switchId = uid("uiapi");
  const flip = h("input", { type: "checkbox", role: "switch", id: switchId, class: "visually-hidden", "aria-label": "UI / API", disabled: true });
  const uiapi = h("label", { class: "uiapi", for: switchId, title: "Show the request as code" },
    flip, h("span", { class: "uiapi-opt uiapi-ui" }, "UI"), h("span", { class: "uiapi-opt uiapi-api" }, "API"));
  const bar = h("div", { class: "progress", hidden: true }, h("div", { class: "progress-fill" }));
  // Shown once the job has an id and until it finishes; main.js says what a click does.
  const cancel = h("button", { type: "button", class: "btn btn-small result-cancel", hidden: true }, "Cancel");
  const ui = h("div", { class: "result-ui" });
  const api = createApiView(hooks.base);
  const meta = h("p", { class: "result-meta", hidden: true });
  const el = h("section", { class: "result", "aria-label": `Result ${letter}` },
    h("div", { class: "result-head" },
      compare ? h("span", { class: `badge badge-${letter.toLowerCase()}`, "aria-hidden": "true" }, letter) : null,
      h("span", { class: "result-model" }, modelName),
      chip,
      cancel,
      h("span", { class: "spacer" }),
      uiapi),
    bar, ui, api.el, meta);

  flip.addEventListener("change", () => {
    ui.hidden = flip.checked;
    meta.hidden = flip.checked || !meta.textContent;
    api.el.hidden = !flip.checked;
  });

  function setStatus(status, progress = null) {
    chip.className = `chip chip-${status}`;
    const pct = status === "in_progress" && progress !== null ? ` ${progress}%` : "";
    chip.textContent = (STATUS_TEXT[status] ?? status) + pct;
    const running = status === "queued" || status === "in_progress" || status === "submitting" || status === "uploading";
    bar.hidden = !running;
    cancel.hidden = !cancel.onclick || !(status === "queued" || status === "in_progress");
    bar.classList.toggle("indeterminate", status !== "in_progress");
    bar.firstChild.style.width = status === "in_progress" ? `${Math.max(4, progress ?? 0)}%` : "";
  }

  function placeholders(body) {
    const size = sizeOf(body?.image_size) ?? { width: 1, height: 1 };
    const count = Number(body?.num_images) || 1;
    replace(ui, h("div", { class: `grid grid-${Math.min(count, 4)}` },
      Array.from({ length: count }, () => h("div", {
        class: "tile skeleton", style: `aspect-ratio: ${size.width} / ${size.height}`,
      }))));
  }

  return {
    el,
    setStatus,

    /** The request is known (and sent): the API view can show it. */
    setRequest(kind, body) {
      api.set(kind, body);
      flip.disabled = false;
      placeholders(body);
    },

    progress(task) {
      setStatus(task.status, task.progress ?? null);
    },

    /** Offer Cancel while the job waits or runs; `stop` asks the server to cancel it. */
    offerCancel(stop) {
      cancel.onclick = async () => {
        cancel.disabled = true;
        try {
          await stop();
        } catch (error) {
          // A job that finished meanwhile (409) just shows its result; anything else says why.
          if (error.status !== 409) this.fail(error, "Could not cancel");
        }
      };
    },

    cancelled(task) {
      setStatus("cancelled");
      replace(ui, h("div", { class: "error-box", role: "alert" },
        h("div", { class: "error-icon", "aria-hidden": "true" }, "×"),
        h("div", {},
          h("p", { class: "error-title" }, "Cancelled"),
          h("p", { class: "error-message" }, `Job ${task.job_id} was cancelled and is not billed.`))));
    },

    complete(task, seed, request, clientSeconds) {
      setStatus("completed");
      const result = task.result ?? {};
      const images = result.data ?? [];
      const format = request.body.output_format ?? result.parameters?.output_format ?? "png";
      const ext = format === "jpeg" ? "jpg" : format;
      replace(ui, h("div", { class: `grid grid-${Math.min(Math.max(images.length, 1), 4)}` },
        images.map((image, index) => {
          const src = image.url ?? (image.b64_json ? `data:${image.content_type ?? "image/png"};base64,${image.b64_json}` : "");
          const name = `tessera-${task.job_id}-${index}.${ext}`;
          const caption = `${modelName} · job ${task.job_id} · image ${index + 1} of ${images.length}`;
          return h("figure", { class: "tile" },
            h("button", { type: "button", class: "tile-open", "aria-label": `Open image ${index + 1} full size`, onclick: () => hooks.open(src, caption, name) },
              h("img", { src, alt: `Generated by ${modelName}: ${request.body.prompt}`, loading: "lazy" })),
            h("figcaption", { class: "tile-actions" },
              h("button", { type: "button", class: "btn btn-small btn-glass", onclick: () => hooks.open(src, caption, name) }, "Open full size"),
              h("button", { type: "button", class: "btn btn-small btn-glass", onclick: () => hooks.download(src, name) }, "Download")));
        })));
      const started = parseTime(task.created_at);
      const finished = parseTime(task.finished_at);
      const seconds = started !== null && finished !== null ? (finished - started) / 1000 : clientSeconds;
      const steps = result.parameters?.num_inference_steps ?? request.body.num_inference_steps;
      const patches = result.usage?.output_tokens;
      const parts = [modelName, steps ? `${steps} steps` : null, formatSeconds(seconds),
        patches !== undefined && patches !== null ? `${formatInt(patches)} patches billed` : null];
      const details = [seed !== null ? `seed ${seed}` : null,
        images[0]?.width ? `${images[0].width}×${images[0].height}` : null];
      replace(meta, h("span", { class: "meta-main" }, parts.filter(Boolean).join(" · ")),
        h("span", { class: "meta-extra" }, details.filter(Boolean).join(" · ")));
      meta.hidden = flip.checked;
      // A seed the server drew is written into the request, so the code makes this very image.
      if (request.body.seed === undefined && seed !== null) {
        const body = { ...request.body, seed: Number.isSafeInteger(Number(seed)) ? Number(seed) : seed };
        api.set(request.kind, body, `Seed ${seed} was drawn by the server; it is filled in so this request makes the same image.`);
      }
    },

    fail(error, title = null) {
      setStatus("failed");
      const info = describe(error);
      replace(ui, h("div", { class: "error-box", role: "alert" },
        h("div", { class: "error-icon", "aria-hidden": "true" }, "!"),
        h("div", {},
          h("p", { class: "error-title" }, title ?? info.title),
          h("p", { class: "error-message" }, info.message),
          info.detail ? h("p", { class: "error-detail" }, info.detail) : null)));
    },
  };
}

/** A run: the prompt and one result per panel, side by side in Compare. */
export function createRun({ prompt, entries, hooks }) {
  const compare = entries.length > 1;
  const views = entries.map((entry) => createResultView({ ...entry, compare, hooks }));
  const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const el = h("article", { class: "run", "aria-label": `Run: ${prompt.slice(0, 80)}` },
    h("header", { class: "run-head" },
      h("p", { class: "run-prompt", title: prompt }, prompt),
      h("time", { class: "run-time" }, time)),
    h("div", { class: `run-grid${compare ? " compare" : ""}` }, views.map((v) => v.el)));
  return { el, views };
}
