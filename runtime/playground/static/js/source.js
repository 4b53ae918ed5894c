// The source image of an image-to-image model: a local file uploaded at once through the
// signed-URL flow (so edits need no public URL), or the URL of an image the server can fetch.

import { InputError } from "./api.js";
import { h, replace, uid } from "./dom.js";

const MAX_BYTES = 20 * 1024 * 1024;

/** createSourcePicker({api}) -> {el, reference(), setInvalid(bool)} */
export function createSourcePicker({ api }) {
  const state = { mode: "upload", file: null, filename: null, pending: null, error: null, preview: null };
  const fileId = uid("source-file");
  const urlId = uid("source-url");

  const file = h("input", {
    type: "file", id: fileId, accept: "image/png,image/jpeg,image/webp,image/gif",
    class: "visually-hidden", "aria-label": "Source image",
  });
  const dropzone = h("label", { for: fileId, class: "dropzone" },
    h("span", { class: "dropzone-icon", "aria-hidden": "true" }, "⇪"),
    h("span", { class: "dropzone-text" }, "Drop an image or ", h("u", {}, "browse")),
    h("span", { class: "dropzone-hint" }, "PNG, JPEG or WebP, up to 20 MB"));
  const preview = h("div", { class: "source-preview", hidden: true });
  const uploadPane = h("div", { class: "source-pane" }, file, dropzone, preview);

  const url = h("input", {
    type: "url", id: urlId, class: "input", placeholder: "https://example.com/photo.png",
    "aria-label": "Image URL", spellcheck: "false", autocomplete: "off",
  });
  const urlPane = h("div", { class: "source-pane", hidden: true }, url,
    h("p", { class: "hint" }, "The server fetches it when you press Generate."));

  const tabs = ["upload", "url"].map((mode) => h("button", {
    type: "button", class: "segment", role: "radio", "aria-checked": String(mode === "upload"),
    onclick: () => setMode(mode),
  }, mode === "upload" ? "Upload" : "URL"));
  const el = h("div", { class: "field source" },
    h("div", { class: "field-row" },
      h("span", { class: "field-label" }, "Source image"),
      h("div", { class: "segmented", role: "radiogroup", "aria-label": "Source image from" }, tabs)),
    uploadPane, urlPane);

  function setMode(mode) {
    state.mode = mode;
    tabs.forEach((tab, i) => tab.setAttribute("aria-checked", String(["upload", "url"][i] === mode)));
    uploadPane.hidden = mode !== "upload";
    urlPane.hidden = mode !== "url";
  }

  function renderPreview(status, tone) {
    if (!state.file) {
      preview.hidden = true;
      dropzone.hidden = false;
      return;
    }
    dropzone.hidden = true;
    preview.hidden = false;
    replace(preview,
      h("img", { src: state.preview, alt: "Source image preview" }),
      h("div", { class: "source-meta" },
        h("span", { class: "source-name", title: state.file.name }, state.file.name),
        h("span", { class: `source-status ${tone}`, role: "status" }, status)),
      h("button", { type: "button", class: "btn btn-icon", "aria-label": "Remove source image", onclick: reset }, "✕"));
  }

  function reset() {
    if (state.preview) URL.revokeObjectURL(state.preview);
    Object.assign(state, { file: null, filename: null, pending: null, error: null, preview: null });
    file.value = "";
    renderPreview();
  }

  function take(chosen) {
    if (!chosen) return;
    reset();
    state.file = chosen;
    state.preview = URL.createObjectURL(chosen);
    if (chosen.size > MAX_BYTES) {
      state.error = new InputError(`${chosen.name} is larger than 20 MB`, "image_url");
      renderPreview("Too large", "bad");
      return;
    }
    renderPreview("Uploading…", "busy");
    const pending = api.upload(chosen).then(
      (name) => {
        if (state.pending !== pending) return;
        state.filename = name;
        renderPreview("Uploaded", "good");
      },
      (error) => {
        if (state.pending !== pending) return;
        state.error = error;
        renderPreview(`Upload failed: ${error.message}`, "bad");
      });
    state.pending = pending;
  }

  file.addEventListener("change", () => take(file.files?.[0]));
  dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    take(event.dataTransfer?.files?.[0]);
  });

  /** The `image_url` to send: the uploaded filename, or the URL; waits for an upload. */
  async function reference() {
    if (state.mode === "url") {
      const value = url.value.trim();
      if (!value) throw new InputError("Enter the URL of a source image, or upload one.", "image_url");
      return value;
    }
    if (!state.file) throw new InputError("This model edits an image: choose a source image first.", "image_url");
    await state.pending;
    if (state.error) throw state.error;
    return state.filename;
  }

  return {
    el,
    reference,
    setInvalid: (invalid) => el.classList.toggle("invalid", invalid),
  };
}
