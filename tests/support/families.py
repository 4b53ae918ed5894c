"""Tiny random-weight pipelines of every family in the seed's line-up, built offline.

Each is the real diffusers pipeline class with components of a few thousand weights: the
transformer, the family's own VAE and its real text encoder class (Qwen2.5-VL, Qwen3,
Mistral3, T5, CLIP) configured to a couple of narrow layers, with byte-level tokenizers
built in memory. Saved with ``save_pretrained``, so a server loads them with
``from_pretrained`` exactly as it loads downloaded weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 0
# The special tokens Qwen's chat templates and processors use, after the 256 bytes.
QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def byte_vocab() -> dict[str, int]:
    """Every byte one token: byte-level BPE with no merges, so any text encodes."""
    from tokenizers.pre_tokenizers import ByteLevel

    return {symbol: index for index, symbol in enumerate(sorted(ByteLevel.alphabet()))}


# Qwen's chat format, for the pipelines that apply a chat template (Z-Image, Flux2): a
# message's content is a string or a list of text and image parts.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}<|im_start|>{{ m.role }}\n"
    "{%- if m.content is string -%}{{ m.content }}{%- else -%}{%- for c in m.content -%}"
    "{%- if c.type == 'text' -%}{{ c.text }}{%- else -%}"
    "<|vision_start|><|image_pad|><|vision_end|>{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def qwen_tokenizer() -> Any:
    from transformers import AddedToken, Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(vocab=byte_vocab(), merges=[])
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN_SPECIAL[1:]]}
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def qwen_processor(tokenizer: Any) -> Any:
    """Qwen2-VL's processor: it expands each image placeholder to the image's patches (at
    most 256 here, so the tiny vision tower stays quick)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(max_pixels=256 * 28 * 28),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def qwen_vl_encoder(tokenizer: Any, width: int = 16, layers: int = 2) -> Any:
    """Qwen2.5-VL with a few narrow layers (text) and two (vision)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": width,
            "intermediate_size": width,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": width,
        },
        hidden_size=width,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        vocab_size=len(tokenizer),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|vision_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def qwen_vae() -> Any:
    """Qwen-Image's causal 3D VAE with its usual 8x downscale, at 4 latent channels."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )


def qwen_transformer() -> Any:
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )


def build_qwen_image(path: Path) -> Path:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    torch.manual_seed(SEED)
    tokenizer = qwen_tokenizer()
    QwenImagePipeline(
        transformer=qwen_transformer(),
        vae=qwen_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=qwen_vl_encoder(tokenizer),
        tokenizer=tokenizer,
    ).save_pretrained(path)
    return path


def build_qwen_image_edit(path: Path, *, plus: bool = False) -> Path:
    """``QwenImageEditPipeline``, or ``QwenImageEditPlusPipeline`` (several references)."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
    )

    torch.manual_seed(SEED)
    tokenizer = qwen_tokenizer()
    pipeline_class = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipeline_class(
        transformer=qwen_transformer(),
        vae=qwen_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=qwen_vl_encoder(tokenizer),
        tokenizer=tokenizer,
        processor=qwen_processor(tokenizer),
    ).save_pretrained(path)
    return path


def small_vae(latent_channels: int) -> Any:
    """A four-level AutoencoderKL (8x downscale) four channels wide."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def build_longcat_image_edit(path: Path) -> Path:
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        LongCatImageEditPipeline,
        LongCatImageTransformer2DModel,
    )

    torch.manual_seed(SEED)
    tokenizer = qwen_tokenizer()
    LongCatImageEditPipeline(
        transformer=LongCatImageTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=16,
            pooled_projection_dim=16,
            axes_dims_rope=[4, 6, 6],
        ),
        # The pipeline packs 2x2 latent patches of 16 channels: 64 into the transformer.
        vae=small_vae(16),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=qwen_vl_encoder(tokenizer),
        tokenizer=tokenizer,
        text_processor=qwen_processor(tokenizer),
    ).save_pretrained(path)
    return path


def build_z_image(path: Path) -> Path:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(SEED)
    tokenizer = qwen_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 512, 512],
    )
    # Z-Image's pad tokens start as torch.empty: give them values, or images may be NaN.
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    ZImagePipeline(
        transformer=transformer,
        vae=small_vae(4),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=Qwen3Model(
            Qwen3Config(
                hidden_size=16,
                intermediate_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                vocab_size=len(tokenizer),
                max_position_embeddings=1024,
            )
        ),
        tokenizer=tokenizer,
    ).save_pretrained(path)
    return path


def build_flux2(path: Path) -> Path:
    """``Flux2Pipeline`` with a Mistral3 text encoder of 30 narrow layers: the pipeline reads
    hidden states 10, 20 and 30. Its tokenizer is a byte-level one with a chat template in
    place of Pixtral's processor: the pipeline only calls ``apply_chat_template`` on it."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(SEED)
    tokenizer = qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    special = {
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config={
                "model_type": "mistral",
                "vocab_size": len(tokenizer),
                "hidden_size": 16,
                "intermediate_size": 16,
                "max_position_embeddings": 1024,
                "num_attention_heads": 2,
                "num_hidden_layers": 30,
                "num_key_value_heads": 2,
                "head_dim": 8,
                "sliding_window": None,
                **special,
            },
            vision_config={
                "model_type": "pixtral",
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 16,
                "image_size": 32,
                "patch_size": 8,
            },
            image_token_index=ids("<|image_pad|>"),
            **special,
        )
    )
    Flux2Pipeline(
        transformer=Flux2Transformer2DModel(
            patch_size=1,
            in_channels=16,
            out_channels=None,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=48,
            timestep_guidance_channels=256,
            axes_dims_rope=[4, 4, 4, 4],
        ),
        vae=AutoencoderKLFlux2(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(4, 4, 4, 4),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=2,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    ).save_pretrained(path)
    return path


def build_sd3(path: Path) -> Path:
    """``StableDiffusion3Pipeline``: two CLIP encoders with projections and a T5."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from tessera.runtime.demo import _t5_tokenizer, clip_tokenizer

    torch.manual_seed(SEED)
    clip = clip_tokenizer()

    def clip_encoder() -> Any:
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                bos_token_id=clip.bos_token_id,
                eos_token_id=clip.eos_token_id,
                pad_token_id=clip.pad_token_id,
                vocab_size=len(clip),
                hidden_size=16,
                intermediate_size=16,
                projection_dim=16,
                num_attention_heads=2,
                num_hidden_layers=2,
                max_position_embeddings=clip.model_max_length,
            )
        )

    t5 = _t5_tokenizer()
    StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=16,
            pooled_projection_dim=32,
            out_channels=4,
        ),
        vae=small_vae(4),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=clip_encoder(),
        tokenizer=clip,
        text_encoder_2=clip_encoder(),
        tokenizer_2=clip,
        text_encoder_3=T5EncoderModel(
            T5Config(
                vocab_size=len(t5),
                d_model=32,
                d_kv=8,
                d_ff=32,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                decoder_start_token_id=0,
            )
        ),
        tokenizer_3=t5,
        image_encoder=None,
        feature_extractor=None,
    ).save_pretrained(path)
    return path


def build_hunyuan_image(path: Path) -> Path:
    """``HunyuanImagePipeline`` with its 32x VAE, a Qwen2.5-VL and a ByT5 encoder, and the
    guiders that do its classifier-free guidance."""
    import torch
    from diffusers import (
        AdaptiveProjectedMixGuidance,
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(SEED)
    tokenizer = qwen_tokenizer()
    HunyuanImagePipeline(
        transformer=HunyuanImageTransformer2DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=(1, 1),
            guidance_embeds=False,
            text_embed_dim=16,
            text_embed_2_dim=16,
            rope_axes_dim=(4, 4),
        ),
        vae=AutoencoderKLHunyuanImage(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32,) * 6,
            layers_per_block=1,
            scaling_factor=0.476986,
            spatial_compression_ratio=32,
            sample_size=128,
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder=qwen_vl_encoder(tokenizer, layers=3),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(
            T5Config(
                d_model=16,
                d_kv=8,
                d_ff=16,
                num_layers=1,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                vocab_size=384,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
                use_cache=False,
            )
        ),
        tokenizer_2=ByT5Tokenizer(),
        guider=AdaptiveProjectedMixGuidance(),
        ocr_guider=AdaptiveProjectedMixGuidance(),
    ).save_pretrained(path)
    return path


# Each family's builder, by pipeline class.
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "QwenImagePipeline": build_qwen_image,
    "QwenImageEditPipeline": build_qwen_image_edit,
    "QwenImageEditPlusPipeline": lambda path: build_qwen_image_edit(path, plus=True),
    "LongCatImageEditPipeline": build_longcat_image_edit,
    "ZImagePipeline": build_z_image,
    "Flux2Pipeline": build_flux2,
    "StableDiffusion3Pipeline": build_sd3,
    "HunyuanImagePipeline": build_hunyuan_image,
}
