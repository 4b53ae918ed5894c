// Where the API key lives: sessionStorage, so it survives a reload of this tab but is gone when
// the tab closes, is never shared with other tabs, and never appears in a URL or a log.

const KEY = "tessera.playground.apiKey";

export function loadKey() {
  try {
    return window.sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function saveKey(value) {
  window.sessionStorage.setItem(KEY, value);
}

export function forgetKey() {
  window.sessionStorage.removeItem(KEY);
}
