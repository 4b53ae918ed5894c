"""bench/gpu.py's code path on CPU (tiny configs): the day a GPU is lent, only the sizes
change. Compile variants are left to the GPU run: inductor takes minutes on a CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"
VARIANTS = ["eager bf16", "first-block-cache 0.12", "fp8 weights", "cudnn attention"]


def test_the_gpu_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH), "--tiny", "--runs", "1", "--batches", "1", "2"]
    command += ["--models", "schnell", "kontext", "--scratch", str(tmp_path), "--variants"]
    done = subprocess.run(
        [*command, *VARIANTS], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for model in ("schnell (FluxPipeline", "kontext (FluxKontextPipeline"):
        assert any(line.startswith(f"== {model}") for line in lines), done.stdout
    rows = [line.split() for line in lines if line.startswith("   eager bf16")]
    assert len(rows) == 2
    # load, first call, s/img, img/s at batch 1 and 2: all measured, all positive.
    assert all(float(value) > 0 for row in rows for value in row[2:7])
    assert sum("cudnn attention" in line and "skipped: needs CUDA" in line for line in lines) == 2
    assert list(tmp_path.iterdir()) == []  # the weights are gone
