// A model's limits and defaults, read from the JSON Schema it publishes in /base_models.
// Servers that publish no schema (or part of one) fall back to the API's global rules.

export const PRESETS = {
  square_hd: { label: "Square HD", width: 1024, height: 1024 },
  square: { label: "Square", width: 512, height: 512 },
  portrait_4_3: { label: "Portrait 3:4", width: 768, height: 1024 },
  portrait_16_9: { label: "Portrait 9:16", width: 576, height: 1024 },
  landscape_4_3: { label: "Landscape 4:3", width: 1024, height: 768 },
  landscape_16_9: { label: "Landscape 16:9", width: 1024, height: 576 },
};

const TASK_LABELS = { "text-to-image": "Text to Image", "image-to-image": "Image to Image" };

/** "image-to-image" -> "Image to Image". */
export function taskLabel(task) {
  return TASK_LABELS[task] ?? String(task ?? "Image").replace(/[-_]/g, " ");
}

export function isEditModel(model) {
  return model?.task === "image-to-image"
    || (model?.input_modalities ?? []).includes("image")
    || (model?.modalities ?? []).includes("image-to-image");
}

function range(spec, fallback) {
  const min = Number.isFinite(spec?.minimum) ? spec.minimum : fallback.min;
  const max = Number.isFinite(spec?.maximum) ? spec.maximum : fallback.max;
  const raw = Number.isFinite(spec?.default) ? spec.default : fallback.default;
  return { min, max, default: Math.min(max, Math.max(min, raw)) };
}

/** Everything the settings panel needs to know about one model. */
export function limitsOf(model) {
  const schema = model?.parameters ?? {};
  const props = schema.properties ?? {};
  const size = props.image_size ?? {};
  const variants = size.oneOf ?? size.anyOf ?? [];
  const named = variants.find((v) => Array.isArray(v.enum));
  const object = variants.find((v) => v.type === "object");
  const minSide = object?.properties?.width?.minimum ?? schema["x-min-side"] ?? 16;
  const maxSide = object?.properties?.width?.maximum ?? schema["x-max-side"] ?? 14142;
  // Offer only the presets this model accepts; unknown preset names keep their name.
  const presets = (named?.enum ?? Object.keys(PRESETS))
    .map((name) => ({ name, ...(PRESETS[name] ?? { label: name, width: null, height: null }) }))
    .filter((p) => p.width === null || (Math.max(p.width, p.height) <= maxSide
      && Math.min(p.width, p.height) >= minSide));
  let defaultSize = size.default ?? "landscape_4_3";
  if (typeof defaultSize === "string" && /^\s*\d+\s*[xX]\s*\d+\s*$/.test(defaultSize)) {
    const [w, h] = defaultSize.toLowerCase().split("x").map((s) => Number(s.trim()));
    defaultSize = { width: w, height: h };
  }
  const guidance = range(props.guidance_scale, { min: 1, max: 20, default: 4.5 });
  const format = props.output_format ?? {};
  const formats = Array.isArray(format.enum) && format.enum.length ? format.enum : ["png", "jpeg", "webp"];
  return {
    presets,
    minSide,
    maxSide,
    defaultSize,
    numImages: range(props.num_images, { min: 1, max: 4, default: 1 }),
    steps: range(props.num_inference_steps, { min: 1, max: 50, default: 28 }),
    guidance: { ...guidance, step: guidance.max - guidance.min > 5 ? 0.1 : 0.05 },
    formats,
    defaultFormat: formats.includes(format.default) ? format.default : formats[0],
    // JSON numbers past 2^53 arrive rounded, so only exact bounds narrow the API's range.
    seed: {
      min: Number.isSafeInteger(props.seed?.minimum) ? BigInt(props.seed.minimum) : -(2n ** 63n),
      max: Number.isSafeInteger(props.seed?.maximum) ? BigInt(props.seed.maximum) : 2n ** 64n - 1n,
    },
  };
}

/** Width and height of a request's image_size (preset name or object), or null. */
export function sizeOf(imageSize) {
  if (imageSize && typeof imageSize === "object") return { width: imageSize.width, height: imageSize.height };
  const preset = PRESETS[imageSize];
  return preset ? { width: preset.width, height: preset.height } : null;
}

/** Patches billed for `count` images of width x height: one per started 16x16 tile. */
export function patchesFor(width, height, count) {
  return Math.ceil(width / 16) * Math.ceil(height / 16) * count;
}
