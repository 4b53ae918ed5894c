// The request behind a result, as code to copy: curl (the exact submit request), a complete
// Python script (submit, long-poll, download), and the same request through the official
// OpenAI SDK (/openai/v1, synchronous). The key is never written out: each reads
// $TESSERA_API_KEY from the environment.

import { encodeJson } from "./api.js";
import { sizeOf } from "./schema.js";

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

/** The OpenAI-compatible base URL beside the native one (`.../v1` -> `.../openai/v1`). */
export function openaiBase(base) {
  return base.replace(/\/v1$/, "/openai/v1");
}

// Native fields that the SDK names differently; the rest of Tessera's go in extra_body.
const OPENAI_NAMES = { model: "model", prompt: "prompt", num_images: "n", output_format: "output_format", response_format: "response_format" };
const SOURCE_FIELDS = new Set(["image_url", "image_urls"]);

function openaiSize(imageSize) {
  const size = sizeOf(imageSize);
  if (size) return `${size.width}x${size.height}`;
  return typeof imageSize === "string" ? imageSize : undefined;
}

// Keyword arguments, one a line: [name, Python source] pairs.
function pyArguments(entries) {
  return entries.map(([name, source]) => `    ${name}=${source},`).join("\n");
}

/** The same request through the official OpenAI SDK: it waits for the images and saves them. */
export function openaiSnippet(base, kind, body) {
  const edit = kind === "edits";
  const named = [];
  const extra = {};
  for (const [name, value] of Object.entries(body)) {
    if (value === undefined || SOURCE_FIELDS.has(name)) continue;
    if (name === "image_size") named.push(["size", openaiSize(value)]);
    else if (OPENAI_NAMES[name]) named.push([OPENAI_NAMES[name], value]);
    else extra[name] = value;
  }
  const order = ["model", "prompt", "n", "size", "output_format", "response_format"];
  named.sort(([a], [b]) => order.indexOf(a) - order.indexOf(b));
  const args = named.map(([name, value]) => [name, pyLiteral(value, 1)]);
  if (edit) args.splice(2, 0, ["image", 'open("source.png", "rb")']);
  if (Object.keys(extra).length) args.push(["extra_body", pyLiteral(extra, 1)]);
  const b64 = body.response_format === "b64_json";
  const extension = body.output_format === "jpeg" ? "jpg" : (body.output_format ?? "png");
  const save = b64
    ? "base64.b64decode(image.b64_json)"
    : "urllib.request.urlopen(image.url).read()";
  return `${b64 ? "import base64\n" : ""}import os
${b64 ? "" : "import urllib.request\n"}
from openai import OpenAI

client = OpenAI(base_url=${JSON.stringify(openaiBase(base))}, api_key=os.environ["${KEY_VARIABLE}"])

# One call: it returns once the images are made (the job is queued and billed as any other).
answer = client.images.${edit ? "edit" : "generate"}(
${pyArguments(args)}
)
for index, image in enumerate(answer.data):
    path = f"image-{index}.${extension}"
    with open(path, "wb") as file:
        file.write(${save})
    print("saved", path)
print("patches billed:", answer.usage.output_tokens)
`;
}
