// The public image API, as the Playground uses it: the same endpoints and `api_key` header as
// any other client, so whatever works here works from curl or Python.

/** The API's base URL, relative to the page so that a proxy path prefix keeps working. */
export function apiBase() {
  return new URL("../v1", window.location.href).href.replace(/\/$/, "");
}

// Seeds may exceed 2^53, where JS numbers lose digits; they travel as BigInt and are
// written into JSON as bare digits. A per-page random marker cannot collide with a prompt.
const MARK = `\uE000${Math.random().toString(36).slice(2)}:`;
const MARKED = new RegExp(`"${MARK}(-?\\d+)"`, "g");

/** JSON.stringify that writes BigInt values as exact integers. */
export function encodeJson(value, indent) {
  return JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? MARK + v : v), indent)
    .replace(MARKED, "$1");
}

/** The exact `result.seed` of a task, read from the raw text before JSON.parse rounds it. */
export function exactSeed(text, parsed) {
  const match = /"seed"\s*:\s*(-?\d+)/.exec(text);
  if (match) return BigInt(match[1]);
  return parsed === null || parsed === undefined ? null : BigInt(parsed);
}

/** An error answered by the API (or the network), with the envelope's parts kept apart. */
export class ApiError extends Error {
  constructor({ status, code, message, field = null, rule = null }) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.field = field;
    this.rule = rule;
  }

  /** Tessera's envelope first, then the shapes other compatible servers answer with. */
  static fromResponse(status, data, text) {
    let message = null;
    let code = null;
    let field = null;
    let rule = null;
    if (data && typeof data === "object") {
      const nested = typeof data.error === "object" && data.error ? data.error : null;
      message = data.message ?? nested?.message ?? null;
      code = typeof data.error === "string" ? data.error : (nested?.code ?? null);
      field = data.field ?? nested?.field ?? null;
      rule = data.rule ?? null;
      if (!message && data.detail) {
        message = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      }
    }
    if (!message) message = (text || "").trim().slice(0, 300) || `HTTP ${status}`;
    return new ApiError({ status, code: code ?? `http.${status}`, message, field, rule });
  }
}

/** An input the Playground refuses before anything is sent (it names the field). */
export class InputError extends Error {
  constructor(message, field) {
    super(message);
    this.name = "InputError";
    this.field = field;
  }
}

const TITLES = {
  0: "Cannot reach the server",
  400: "Invalid request",
  401: "API key refused",
  403: "Not allowed",
  404: "Not found",
  413: "Too large",
  422: "Invalid parameters",
  429: "Too many requests",
  503: "Server unavailable",
};

/** A readable {title, message, field} for any error the Playground can meet. */
export function describe(error) {
  if (error instanceof ApiError) {
    const title = TITLES[error.status] ?? (error.status >= 500 ? "Server error" : "Request failed");
    let message = error.message;
    if (error.status === 401) {
      message = `${error.message}. Sign out and sign in again with a valid key.`;
    }
    const detail = error.status ? `HTTP ${error.status}${error.code ? ` · ${error.code}` : ""}` : "";
    return { title, message, detail, field: error.field };
  }
  if (error instanceof InputError) {
    return { title: "Check the settings", message: error.message, detail: "", field: error.field };
  }
  return { title: "Something went wrong", message: String(error?.message ?? error), detail: "" };
}

export class Api {
  constructor(base, key) {
    this.base = base.replace(/\/$/, "");
    this.key = key;
  }

  async request(method, path, { body, query, signal } = {}) {
    const url = new URL(this.base + path);
    for (const [name, value] of Object.entries(query ?? {})) url.searchParams.set(name, value);
    const headers = { api_key: this.key, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : encodeJson(body),
        signal,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError({ status: 0, code: "network", message: `${this.base} did not answer (${error.message})` });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw ApiError.fromResponse(response.status, data, text);
    return { data, text };
  }

  /** Every model with its published parameter schema. */
  async models() {
    const { data } = await this.request("GET", "/base_models", { query: { inference: "true" } });
    return Array.isArray(data?.models) ? data.models : [];
  }

  /** POST a generation ("generations") or edit ("edits"); resolves to the job id. */
  async submit(kind, body, signal) {
    const { data } = await this.request("POST", `/images/${kind}`, { body, signal });
    return data.job_id;
  }

  /** One long-poll: the task once its status changes, or after `wait` seconds. */
  async task(jobId, wait, signal) {
    const { data, text } = await this.request("GET", `/images/tasks/${encodeURIComponent(jobId)}`, {
      query: { wait: String(wait) },
      signal,
    });
    return { task: data, seed: data?.result ? exactSeed(text, data.result.seed) : null };
  }

  /** Cancel a queued or running job; it ends `cancelled` and is never billed. */
  async cancel(jobId) {
    const { data } = await this.request("POST", `/images/tasks/${encodeURIComponent(jobId)}/cancel`);
    return data;
  }

  /**
   * The task's server-sent events: yields each state (status, progress) as the server sends
   * it, and returns when the stream ends (the task finished, or the connection was cut).
   * fetch, not EventSource: the key travels in a header, which EventSource cannot send.
   */
  async *events(jobId, signal) {
    const url = `${this.base}/images/tasks/${encodeURIComponent(jobId)}/events`;
    let response;
    try {
      response = await fetch(url, {
        headers: { api_key: this.key, Accept: "text/event-stream" },
        signal,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      return;
    }
    if (!response.ok || !response.body) {
      const text = await response.text();
      let data = null;
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
      throw ApiError.fromResponse(response.status, data, text);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).trimStart())
            .join("\n");
          if (data) yield JSON.parse(data);
        }
      }
    } catch (error) {
      if (error.name === "AbortError") throw error;
    } finally {
      reader.releaseLock();
    }
  }

  /** Upload a source image through the signed-URL flow; resolves to its `filename`. */
  async upload(file, signal) {
    const { data } = await this.request("GET", "/images/signed-url", { signal });
    let response;
    try {
      // The signed URL carries its own authority: the key is not sent along.
      response = await fetch(data.signed_url, {
        method: "PUT",
        body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" },
        signal,
        credentials: "omit",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError({ status: 0, code: "network", message: `the upload failed (${error.message})` });
    }
    if (!response.ok) {
      const text = await response.text();
      let parsed = null;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
      const error = ApiError.fromResponse(response.status, parsed, text);
      error.field = "image_url";
      throw error;
    }
    return data.filename;
  }
}
