// The request behind a result, as code to copy: curl (the exact submit request) and a complete
// Python script (submit, long-poll, download). The key is never written out: both read
// $TESSERA_API_KEY from the environment.

import { encodeJson } from "./api.js";

export const KEY_VARIABLE = "TESSERA_API_KEY";

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

/** The exact submit request as a curl command (prints {"job_id": ...}). */
export function curlSnippet(base, kind, body) {
  return [
    `curl -sS -X POST ${shellQuote(`${base}/images/${kind}`)} \\`,
    `  -H "api_key: $${KEY_VARIABLE}" \\`,
    "  -H 'Content-Type: application/json' \\",
    `  -d ${shellQuote(encodeJson(body, 2))}`,
  ].join("\n");
}

/** The follow-up: long-poll the task until it completes (the result carries the image URLs). */
export function curlPollSnippet(base) {
  return `curl -sS "${base}/images/tasks/$JOB_ID?wait=60" -H "api_key: $${KEY_VARIABLE}"`;
}

// A Python literal for a JSON value: True/False/None, strings via JSON (valid Python too).
function pyLiteral(value, indent) {
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => pad + pyLiteral(v, indent + 1)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${pyLiteral(v, indent + 1)}`).join(",\n")},\n${end}}`;
}

/** A complete Python (requests) script that makes the same request and saves the images. */
export function pythonSnippet(base, kind, body) {
  const extension = body.output_format === "jpeg" ? "jpg" : (body.output_format ?? "png");
  return `import os
import time

import requests

API = ${JSON.stringify(base)}
HEADERS = {"api_key": os.environ["${KEY_VARIABLE}"]}

payload = ${pyLiteral(body, 0)}

response = requests.post(f"{API}/images/${kind}", json=payload, headers=HEADERS, timeout=60)
response.raise_for_status()
job_id = response.json()["job_id"]

# Long-poll: each request returns as soon as the status changes (or after 30 s).
while True:
    task = requests.get(
        f"{API}/images/tasks/{job_id}", params={"wait": 30}, headers=HEADERS, timeout=90
    ).json()
    if task["status"] in ("completed", "failed"):
        break
    time.sleep(1)

if task["status"] == "failed":
    raise SystemExit(task["error"]["message"])
for index, image in enumerate(task["result"]["data"]):
    path = f"image-{job_id}-{index}.${extension}"
    with open(path, "wb") as file:
        file.write(requests.get(image["url"], timeout=60).content)
    print("saved", path)
print("patches billed:", task["result"]["usage"]["output_tokens"])
`;
}
