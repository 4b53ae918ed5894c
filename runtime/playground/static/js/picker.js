// The searchable model dropdown: a button labelled "Model" opening a popover with a search box
// and a listbox. Every entry is tagged with its provider and task.

import { h, replace, uid } from "./dom.js";
import { isEditModel, taskLabel } from "./schema.js";

function tags(model) {
  return h("span", { class: "tags" },
    h("span", { class: "tag tag-provider" }, model.provider || "Unknown provider"),
    h("span", { class: `tag ${isEditModel(model) ? "tag-edit" : "tag-t2i"}` }, taskLabel(model.task)));
}

// "demo edit" finds "tessera-demo-edit" and "image to image" finds "Image to Image": the
// query is matched as one phrase, with dashes and underscores read as spaces.
const normal = (text) => String(text ?? "").toLowerCase().replace(/[-_\s]+/g, " ").trim();

function matches(model, query) {
  const phrase = normal(query);
  if (!phrase) return true;
  return [model.model_name, model.provider, model.task, taskLabel(model.task), model.description]
    .some((field) => normal(field).includes(phrase));
}

/**
 * createModelPicker({models, selected, onChange}) -> {label, el, select(name), value()}.
 * `label` and `el` are placed by the caller; the label's `for` names the trigger button.
 */
export function createModelPicker({ models, selected, onChange }) {
  const triggerId = uid("model");
  const listId = uid("models");
  let current = models.find((m) => m.model_name === selected) ?? models[0] ?? null;
  let visible = [];
  let active = -1;

  const summary = h("span", { class: "picker-summary" });
  const trigger = h("button", {
    type: "button", id: triggerId, class: "picker-trigger",
    "aria-haspopup": "listbox", "aria-expanded": "false", "aria-controls": listId,
  }, summary, h("span", { class: "chevron", "aria-hidden": "true" }));
  const search = h("input", {
    type: "search", class: "input picker-search", placeholder: "Search models",
    "aria-label": "Search", autocomplete: "off", spellcheck: "false",
    role: "combobox", "aria-controls": listId, "aria-expanded": "true", "aria-autocomplete": "list",
  });
  const list = h("ul", { id: listId, role: "listbox", class: "picker-list", "aria-label": "Choices" });
  const empty = h("p", { class: "picker-empty", hidden: true }, "No model matches your search.");
  const pop = h("div", { class: "picker-pop", hidden: true }, search, list, empty);
  const el = h("div", { class: "picker" }, trigger, pop);
  const label = h("label", { for: triggerId, class: "field-label" }, "Model");

  function renderSummary() {
    if (!current) {
      replace(summary, h("span", { class: "picker-name muted" }, "No models on this server"));
      trigger.disabled = true;
      return;
    }
    replace(summary, h("span", { class: "picker-name" }, current.model_name), tags(current));
  }

  function renderList() {
    visible = models.filter((m) => matches(m, search.value.trim()));
    active = Math.max(0, visible.findIndex((m) => m === current));
    replace(list, visible.map((model, index) => {
      const tagId = uid("tags");
      const item = h("li", {
        role: "option", id: `${listId}-${index}`, class: "picker-option",
        "aria-selected": String(model === current), "aria-label": model.model_name,
        "aria-describedby": tagId,
        onclick: () => choose(model),
        onmousemove: () => setActive(index),
      },
      h("div", { class: "picker-option-top" },
        h("span", { class: "picker-name" }, model.model_name),
        h("span", { id: tagId }, tags(model))),
      model.description ? h("div", { class: "picker-desc" }, model.description) : null);
      return item;
    }));
    empty.hidden = visible.length > 0;
    setActive(active);
  }

  function setActive(index) {
    active = index;
    [...list.children].forEach((item, i) => item.classList.toggle("active", i === index));
    const item = list.children[index];
    if (item) {
      search.setAttribute("aria-activedescendant", item.id);
      item.scrollIntoView({ block: "nearest" });
    } else {
      search.removeAttribute("aria-activedescendant");
    }
  }

  function open() {
    pop.hidden = false;
    trigger.setAttribute("aria-expanded", "true");
    search.value = "";
    renderList();
    search.focus();
    document.addEventListener("pointerdown", outside, true);
  }

  function close(focusTrigger = true) {
    pop.hidden = true;
    trigger.setAttribute("aria-expanded", "false");
    document.removeEventListener("pointerdown", outside, true);
    if (focusTrigger) trigger.focus();
  }

  function outside(event) {
    if (!el.contains(event.target)) close(false);
  }

  function choose(model) {
    const changed = model !== current;
    current = model;
    renderSummary();
    close();
    if (changed) onChange(model);
  }

  trigger.addEventListener("click", () => (pop.hidden ? open() : close()));
  search.addEventListener("input", renderList);
  search.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      if (visible.length) setActive((active + step + visible.length) % visible.length);
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (visible[active]) choose(visible[active]);
    } else if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });

  renderSummary();
  return {
    label,
    el,
    focus: () => trigger.focus(),
    setInvalid: (invalid) => trigger.classList.toggle("invalid", invalid),
    value: () => current,
  };
}
