"""Tiny random-weight diffusers pipelines, so the whole serving path runs offline on a CPU.

They are real pipeline classes (``FluxPipeline`` and ``FluxKontextPipeline``) with real
tokenizers built from an in-memory vocabulary, saved with ``save_pretrained`` and loaded back
with ``from_pretrained`` exactly like downloaded weights. Only their sizes are small: the
images they make are coloured noise, but every code path (tokenising, denoising, VAE
decoding, seeding, batching) is the one a full-size model takes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tessera.runtime.params import Task

DEMO_SEED = 1234
_CLIP_MAX_LENGTH = 77
_VOCAB_SIZE = 1000

# Written beside model_index.json so that `serve` can tell a finished demo build from a
# half-written one (a crash during save_pretrained) and knows which task it serves.
MARKER_FILE = "tessera-demo.json"


def clip_tokenizer() -> Any:
    """A byte-level CLIP BPE tokenizer with no merges: every byte is one token.

    Built offline (no Hub), so tests can make tiny pipelines of other families with it too.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def _t5_tokenizer() -> Any:
    """A unigram T5 tokenizer over printable ASCII, pieces with and without the word marker."""
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    for code in range(32, 127):
        char = chr(code)
        pieces.append(("\u2581" + char, -1.0))
        pieces.append((char, -2.0))
    pieces.append(("\u2581", -3.0))
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _components(task: Task) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(DEMO_SEED)
    latent_channels = 4
    hidden = 32
    # Four VAE levels give the usual 8x spatial compression, so a 1024x1024 image is a
    # 64x64 grid of transformer tokens, as in full-size Flux; narrow levels keep the
    # decoder (the dominant cost on a CPU) well under a second at that size.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        # One head: attention over 4,096 image tokens is the transformer's whole cost here.
        num_attention_heads=1,
        joint_attention_dim=hidden,
        pooled_projection_dim=hidden,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=_VOCAB_SIZE - 2,
            eos_token_id=_VOCAB_SIZE - 1,
            pad_token_id=_VOCAB_SIZE - 1,
            hidden_size=hidden,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            vocab_size=_VOCAB_SIZE,
            max_position_embeddings=_CLIP_MAX_LENGTH,
            projection_dim=hidden,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=_VOCAB_SIZE,
            d_model=hidden,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            decoder_start_token_id=0,
        )
    )
    components: dict[str, Any] = {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": vae,
        "transformer": transformer,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": _t5_tokenizer(),
    }
    if task is Task.IMAGE_TO_IMAGE:
        components.update(image_encoder=None, feature_extractor=None)
    return components


def build_demo_pipeline(path: Path, task: Task = Task.TEXT_TO_IMAGE) -> Path:
    """Write a tiny pipeline for ``task`` to ``path`` and return it.

    The pipeline is written to a temporary sibling and renamed into place, so an interrupted
    build never leaves a folder that looks finished.
    """
    from tessera.runtime.worker.pipeline import quiet_libraries

    quiet_libraries()
    from diffusers import FluxKontextPipeline, FluxPipeline

    pipeline_class = FluxKontextPipeline if task is Task.IMAGE_TO_IMAGE else FluxPipeline
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        pipeline_class(**_components(task)).save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps({"task": task.value}))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def is_demo_pipeline(path: Path, task: Task) -> bool:
    """True when ``path`` holds a finished demo build for ``task``."""
    marker = Path(path) / MARKER_FILE
    try:
        return bool(json.loads(marker.read_text()).get("task") == task.value)
    except (OSError, ValueError):
        return False


def ensure_demo_pipeline(path: Path, task: Task) -> Path:
    """Build the demo pipeline once; later calls reuse what is on disk."""
    if not is_demo_pipeline(path, task):
        build_demo_pipeline(path, task)
    return Path(path)
