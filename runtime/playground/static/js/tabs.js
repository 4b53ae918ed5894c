// The A / B tab bar that Compare puts at the top of the sidebar. One settings panel shows at a
// time, so Model A's settings are a click away rather than a long scroll above Model B's.
// It follows the WAI-ARIA tabs pattern: the selected tab is the only tab stop, and the arrow
// keys (Home and End too) move between the tabs, showing each one's panel at once.

import { h, uid } from "./dom.js";

/**
 * createPanelTabs(panels) -> {el, enable(on), select(index, focus), refresh()} for main.js.
 * Each panel is one from createPanel(): its `el` needs an id, for the tab's aria-controls.
 */
export function createPanelTabs(panels) {
  const titles = panels.map((panel) =>
    h("span", { id: uid("tab-title"), class: "side-tab-title" }, `Model ${panel.letter}`));
  const names = panels.map(() => h("span", { id: uid("tab-model"), class: "side-tab-model" }));
  // Named "Model A" by its title, with the model's name as the description: the name stays
  // short and fixed, which is also what the panel borrows as its own name.
  const tabs = panels.map((panel, i) => h("button", {
    type: "button", role: "tab", id: uid("tab"),
    class: `side-tab side-tab-${panel.letter.toLowerCase()}`,
    "aria-controls": panel.el.id, "aria-labelledby": titles[i].id, "aria-describedby": names[i].id,
    onclick: () => select(i),
  },
  h("span", { class: `badge badge-${panel.letter.toLowerCase()}`, "aria-hidden": "true" }, panel.letter),
  titles[i], names[i]));
  const el = h("div", { class: "side-tabs", role: "tablist", "aria-label": "Compared models", hidden: true }, tabs);
  let current = 0;

  function select(index, focus = false) {
    current = index;
    tabs.forEach((tab, i) => {
      tab.setAttribute("aria-selected", String(i === index));
      tab.tabIndex = i === index ? 0 : -1;
      panels[i].el.hidden = i !== index;
    });
    if (focus) tabs[index].focus();
  }

  // Two tabs side by side: left and right wrap around, as the pattern suggests.
  el.addEventListener("keydown", (event) => {
    const target = { ArrowLeft: current - 1, ArrowRight: current + 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (target === undefined) return;
    event.preventDefault();
    select((target + tabs.length) % tabs.length, true);
  });

  /** Compare on: the panels become tab panels named by their tabs. Off: plain regions again. */
  function enable(on) {
    el.hidden = !on;
    panels.forEach((panel, i) => {
      if (on) {
        panel.el.setAttribute("role", "tabpanel");
        panel.el.setAttribute("aria-labelledby", titles[i].id);
      } else {
        panel.el.removeAttribute("role");
        panel.el.removeAttribute("aria-labelledby");
      }
    });
  }

  /** Show each panel's current model under its tab's title (in full on hover, if cut short). */
  function refresh() {
    panels.forEach((panel, i) => {
      const name = panel.model()?.model_name ?? "no model";
      names[i].textContent = name;
      names[i].title = name;
    });
  }

  refresh();
  return { el, enable, select, refresh };
}
