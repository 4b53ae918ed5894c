"""`helm test`: one job through the gateway Service, over the public client API; checks
that the image is the size asked for and that the job was billed its patches.

Run by the chart's test pod (templates/tests/generate.yaml) as `python -c`, and by
tests/chart against a real `tessera serve --demo`.
Environment: TESSERA_BASE_URL, TESSERA_API_KEY, TESSERA_TEST_MODEL, TESSERA_TEST_TIMEOUT.
"""

import base64
import io
import math
import os

from PIL import Image

from tessera.runtime.client import TesseraClient

model = os.environ["TESSERA_TEST_MODEL"]
width, height = 128, 96
base_url, key = os.environ["TESSERA_BASE_URL"], os.environ["TESSERA_API_KEY"]
with TesseraClient(base_url, key) as client:
    served = [m.name for m in client.models()]
    if model not in served:
        raise SystemExit(f"{model!r} is not served (apply its ImageModel first): {served}")
    request = {
        "model": model,
        "prompt": "helm test: a lighthouse at dusk",
        "image_size": {"width": width, "height": height},
        "num_inference_steps": 2,
        "seed": 7,
        "response_format": "b64_json",
    }
    job = client.submit_generation(request)
    info = client.wait(job, timeout=float(os.environ.get("TESSERA_TEST_TIMEOUT", "300")))
if len(info.images) != 1 or not info.images[0].b64_json:
    raise SystemExit(f"job {job}: expected one inline image, got {info.raw}")
image = Image.open(io.BytesIO(base64.b64decode(info.images[0].b64_json)))
image.load()
patches = math.ceil(width / 16) * math.ceil(height / 16)
if image.size != (width, height):
    raise SystemExit(f"job {job}: the image is {image.size}, not the {(width, height)} asked for")
if info.patches != patches:
    raise SystemExit(f"job {job}: billed {info.patches} patches, not {patches}")
print(f"job {job}: {image.format} {width}x{height} from {model}, {patches} patches billed")
