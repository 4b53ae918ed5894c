// Advanced settings, built from one model's limits and defaults (see schema.js). Labels are
// the API's own names ("Image Size", "Guidance Scale", ...) so the UI maps onto the request.

import { InputError } from "./api.js";
import { formatInt, h, uid } from "./dom.js";

// A labelled field; `body` wraps the control when it comes with buttons around it.
function field(labelText, control, { extra = null, hint = null, body = control } = {}) {
  const id = control.id || uid("f");
  control.id = id;
  return h("div", { class: "field" },
    h("div", { class: "field-row" }, h("label", { for: id, class: "field-label" }, labelText), extra),
    body, hint);
}

function slider(labelText, spec, step) {
  const input = h("input", {
    type: "range", class: "slider", min: spec.min, max: spec.max, step, value: String(spec.default),
  });
  const readout = h("output", { class: "readout" }, String(spec.default));
  const sync = () => {
    readout.textContent = input.value;
    const share = (Number(input.value) - spec.min) / ((spec.max - spec.min) || 1);
    input.style.setProperty("--fill", `${share * 100}%`);
  };
  input.addEventListener("input", sync);
  sync();
  const scale = h("div", { class: "slider-scale", "aria-hidden": "true" },
    h("span", {}, String(spec.min)), h("span", {}, String(spec.max)));
  return { input, sync, el: field(labelText, input, { extra: readout, hint: scale }) };
}

function sizeLabel(preset) {
  return preset.width ? `${preset.label} · ${preset.width}×${preset.height}` : preset.label;
}

/** createAdvanced(limits, onChange) -> {el, controls, read(), estimate()} */
export function createAdvanced(limits, onChange) {
  // Image Size: the presets this model accepts, or a custom width x height.
  const size = h("select", { class: "input select" },
    limits.presets.map((p) => h("option", { value: p.name }, sizeLabel(p))),
    h("option", { value: "custom" }, "Custom…"));
  const dims = { min: limits.minSide, max: limits.maxSide, step: 16, inputmode: "numeric", class: "input" };
  const width = h("input", { type: "number", ...dims, id: uid("width") });
  const height = h("input", { type: "number", ...dims, id: uid("height") });
  const custom = h("div", { class: "custom-size", hidden: true },
    h("label", { for: width.id, class: "mini-label" }, "Width"), width,
    h("span", { class: "times", "aria-hidden": "true" }, "×"),
    h("label", { for: height.id, class: "mini-label" }, "Height"), height);
  const sizeHint = h("p", { class: "hint" }, `Each side ${limits.minSide}–${formatInt(limits.maxSide)} px.`);

  const guidance = slider("Guidance Scale", limits.guidance, limits.guidance.step);
  const steps = slider("Num Inference Steps", limits.steps, 1);

  const count = h("input", {
    type: "number", class: "input stepper-input", min: limits.numImages.min, max: limits.numImages.max,
    step: 1, value: String(limits.numImages.default), inputmode: "numeric",
  });
  const bump = (delta) => () => {
    const next = Math.min(limits.numImages.max, Math.max(limits.numImages.min, (Number(count.value) || 0) + delta));
    count.value = String(next);
    onChange();
  };
  const stepper = h("div", { class: "stepper" },
    h("button", { type: "button", class: "btn btn-icon", "aria-label": "Fewer images", onclick: bump(-1) }, "−"),
    count,
    h("button", { type: "button", class: "btn btn-icon", "aria-label": "More images", onclick: bump(1) }, "+"));

  const seed = h("input", {
    type: "text", class: "input", inputmode: "numeric", placeholder: "Random", autocomplete: "off",
    spellcheck: "false",
  });
  const dice = h("button", {
    type: "button", class: "btn btn-icon", "aria-label": "Roll the dice", title: "Pick a random seed",
    onclick: () => {
      seed.value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
    },
  }, "⚄");

  const format = h("select", { class: "input select" },
    limits.formats.map((name) => h("option", { value: name }, name.toUpperCase())));

  function reset() {
    const preset = typeof limits.defaultSize === "string"
      && limits.presets.some((p) => p.name === limits.defaultSize);
    const first = limits.presets.find((p) => p.width) ?? { width: 1024, height: 768 };
    const start = preset ? limits.presets.find((p) => p.name === limits.defaultSize) : first;
    size.value = preset ? limits.defaultSize : "custom";
    width.value = String(typeof limits.defaultSize === "object" ? limits.defaultSize.width : start.width);
    height.value = String(typeof limits.defaultSize === "object" ? limits.defaultSize.height : start.height);
    custom.hidden = size.value !== "custom";
    guidance.input.value = String(limits.guidance.default);
    steps.input.value = String(limits.steps.default);
    guidance.sync();
    steps.sync();
    count.value = String(limits.numImages.default);
    format.value = limits.defaultFormat;
    seed.value = "";
    onChange();
  }

  size.addEventListener("change", () => {
    const preset = limits.presets.find((p) => p.name === size.value);
    if (preset?.width) {
      width.value = String(preset.width);
      height.value = String(preset.height);
    }
    custom.hidden = size.value !== "custom";
    onChange();
  });
  for (const input of [width, height, count, guidance.input, steps.input, format]) {
    input.addEventListener("input", onChange);
  }

  const el = h("div", { class: "advanced" },
    field("Image Size", size, { hint: h("div", {}, custom, sizeHint) }),
    guidance.el,
    field("Num Images", count, { body: stepper }),
    steps.el,
    field("Seed", seed, { body: h("div", { class: "seed-row" }, seed, dice) }),
    field("Output Format", format),
    h("button", { type: "button", class: "btn btn-link", onclick: reset }, "Reset to defaults"));
  reset();

  function integer(input, name, label) {
    const text = input.value.trim();
    if (!/^-?\d+$/.test(text)) throw new InputError(`${label} must be a whole number.`, name);
    return Number(text);
  }

  /** The request fields these settings stand for; throws InputError on unparsable input. */
  function read() {
    const values = {};
    values.image_size = size.value === "custom"
      ? { width: integer(width, "image_size.width", "Width"), height: integer(height, "image_size.height", "Height") }
      : size.value;
    values.num_images = integer(count, "num_images", "Num Images");
    values.num_inference_steps = Number(steps.input.value);
    values.guidance_scale = Math.round(Number(guidance.input.value) * 100) / 100;
    const seedText = seed.value.trim();
    if (seedText) {
      if (!/^-?\d+$/.test(seedText)) throw new InputError("Seed must be a whole number (or empty for a random one).", "seed");
      const value = BigInt(seedText);
      if (value < limits.seed.min || value > limits.seed.max) {
        throw new InputError(`Seed must be between ${limits.seed.min} and ${limits.seed.max}.`, "seed");
      }
      values.seed = Number.isSafeInteger(Number(value)) ? Number(value) : value;
    }
    values.output_format = format.value;
    return values;
  }

  /** Width, height and image count for the patch estimate, or null while unparsable. */
  function estimate() {
    const preset = limits.presets.find((p) => p.name === size.value);
    const w = preset?.width ?? Number(width.value);
    const ht = preset?.height ?? Number(height.value);
    const n = Number(count.value);
    return w > 0 && ht > 0 && n > 0 ? { width: w, height: ht, count: n } : null;
  }

  return {
    el,
    read,
    estimate,
    seed,
    controls: { image_size: size, "image_size.width": width, "image_size.height": height,
      num_images: count, num_inference_steps: steps.input, guidance_scale: guidance.input, seed, output_format: format },
  };
}
