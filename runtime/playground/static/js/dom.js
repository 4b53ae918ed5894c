// Tiny DOM helpers. Elements are built with properties and text nodes, never innerHTML, so
// prompts, model names and server messages can never inject markup.

// Set as properties (live state); everything else is an attribute.
const PROPS = new Set(["value", "checked", "hidden", "disabled", "selected", "readOnly"]);

/**
 * Create an element: h("button", {class: "btn", onclick: fn}, "Text", childNode).
 * "on*" keys with a function become listeners, a few live-state keys become properties,
 * everything else an attribute; null, undefined and false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      el.style.cssText = value; // CSSOM, which the page's CSP (no inline styles) allows
    } else if (PROPS.has(key)) {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let counter = 0;
/** A page-unique id, for label/aria wiring between generated elements. */
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** 12345 -> "12,345": numbers read the same whatever the browser's locale. */
export function formatInt(value) {
  return Number(value).toLocaleString("en-US");
}
