// One column of settings: model, source image (for image-to-image models) and advanced
// settings. Compare shows two of them, "A" and "B", each making its own request; the tab bar
// in tabs.js shows one at a time and carries the letter badge.

import { InputError } from "./api.js";
import { h, replace, uid } from "./dom.js";
import { createModelPicker } from "./picker.js";
import { isEditModel, limitsOf } from "./schema.js";
import { createAdvanced } from "./settings.js";
import { createSourcePicker } from "./source.js";

function priceLine(model) {
  const perMillion = Number(model?.pricing?.price_per_million_patches);
  if (!Number.isFinite(perMillion)) return null;
  return `$${perMillion.toFixed(2)} per million patches`;
}

/** createPanel({letter, models, selected, api, onChange}) -> panel API used by main.js. */
export function createPanel({ letter, models, selected, api, onChange }) {
  const info = h("div", { class: "model-info" });
  const sourceSlot = h("div", { class: "source-slot" });
  const advancedSlot = h("div", { class: "advanced-slot", hidden: true });
  const toggleId = uid("advanced");
  const toggle = h("input", { type: "checkbox", role: "switch", id: toggleId, "aria-label": "Show advanced settings" });
  const source = createSourcePicker({ api });
  let advanced = null;

  const picker = createModelPicker({ models, selected, onChange: (model) => useModel(model, true) });
  const el = h("section", { class: "panel", id: uid("settings"), "aria-label": `Settings ${letter}`, "data-letter": letter },
    h("div", { class: "field" }, picker.label, picker.el, info),
    sourceSlot,
    h("label", { class: "switch switch-row", for: toggleId },
      h("span", { class: "switch-text" }, "Show advanced settings"),
      toggle,
      h("span", { class: "switch-track", "aria-hidden": "true" }, h("span", { class: "switch-thumb" }))),
    advancedSlot);

  toggle.addEventListener("change", () => {
    advancedSlot.hidden = !toggle.checked;
  });

  function useModel(model, keepSeed) {
    const seed = keepSeed && advanced ? advanced.seed.value : "";
    replace(info,
      model?.description ? h("p", { class: "model-desc" }, model.description) : null,
      priceLine(model) ? h("p", { class: "model-price" }, priceLine(model)) : null);
    replace(sourceSlot, isEditModel(model) ? source.el : null);
    advanced = createAdvanced(limitsOf(model), onChange);
    advanced.seed.value = seed;
    replace(advancedSlot, advanced.el);
    onChange();
  }

  useModel(picker.value(), false);

  const invalid = new Set();
  function mark(element) {
    element.classList.add("invalid");
    element.setAttribute("aria-invalid", "true");
    invalid.add(element);
  }

  return {
    el,
    letter,
    model: () => picker.value(),
    estimate: () => advanced.estimate(),

    /** {kind, body}: the exact request this panel stands for. */
    async buildRequest(prompt) {
      const model = picker.value();
      if (!model) throw new InputError("This server offers no model to call.", "model");
      const body = { model: model.model_name, prompt };
      const edit = isEditModel(model);
      if (edit) body.image_url = await source.reference();
      Object.assign(body, advanced.read());
      return { kind: edit ? "edits" : "generations", body, model };
    },

    /** Point at the control behind an API error's `field` (opening advanced settings). */
    markError(fieldName) {
      if (!fieldName) return;
      if (fieldName === "model") {
        picker.setInvalid(true);
        return;
      }
      if (/^(image_url|image_urls|body)/.test(fieldName)) {
        source.setInvalid(true);
        mark(source.el);
        return;
      }
      const control = advanced.controls[fieldName]
        ?? advanced.controls[fieldName.split(".")[0]];
      if (!control) return;
      if (!toggle.checked) {
        toggle.checked = true;
        advancedSlot.hidden = false;
      }
      mark(control);
      control.closest(".field")?.classList.add("invalid");
      control.scrollIntoView({ block: "center", behavior: "smooth" });
    },

    clearErrors() {
      picker.setInvalid(false);
      source.setInvalid(false);
      for (const element of invalid) {
        element.classList.remove("invalid");
        element.removeAttribute("aria-invalid");
        element.closest(".field")?.classList.remove("invalid");
      }
      invalid.clear();
    },
  };
}
