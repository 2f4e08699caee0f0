"""Libra's frozen vision tokenizer: CLIP features → quant conv → LFQ codes, and back.

``VisionTokenizer.encode`` turns CLIP-normalised pixels into, per image, the LFQ indices of its g×g
patches (K codebooks) and the continuous signal (selected CLIP hidden states concatenated, CLS dropped;
docs/design.md §5.3). ``decode_indices`` turns indices back into pixels through ``project_out`` →
``post_quant_conv`` → the pixel decoder (docs/design.md §5.4, §5.5).

Folder layout (official, shared with the rest of the checkpoint folder)::

    vision_tokenizer_config.yaml      params.ckpt_path / params.ddconfig.encoder_name are relative
    vqgan.ckpt                        official torch pickle {"state_dict": ...}, or
    vision_tokenizer.safetensors      our own layout (no CLIP weights: they live in the CLIP folder)
    <encoder_name>/                   HF CLIP vision folder (config.json, weights, preprocessor_config.json)

The module is frozen and in eval mode by construction; fp32 by default (docs/design.md B20), bf16 on request.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .image_processing import ImagePreprocessor
from .lfq import LookupFreeQuantizer
from .pixel_decoder import PixelDecoder

CONFIG_NAME = "vision_tokenizer_config.yaml"
WEIGHTS_NAME = "vision_tokenizer.safetensors"
OFFICIAL_WEIGHTS_NAME = "vqgan.ckpt"
# Official checkpoint prefix of the CLIP tower (taming VQModel → encoder → HF CLIPVisionModel of 4.38).
OFFICIAL_CLIP_PREFIX = "encoder.vision_tower.vision_model."


@dataclass
class VisionTokenizerConfig:
    """The fields of ``vision_tokenizer_config.yaml`` (official names; defaults = libra-11b)."""

    encoder_name: str = "openai-clip-vit-large-patch14-336"
    select_layer: list[int] = field(default_factory=lambda: [2, 10, 18, 22])
    embed_dim: int = 1024
    codebook_size: int = 512
    num_codebook: int = 2
    max_vision_token_length: int = 578
    ckpt_path: str = OFFICIAL_WEIGHTS_NAME
    z_channels: int = 1024
    resolution: int = 336
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 4, 8])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [24])
    dropout: float = 0.0
    initial_resolution: int = 24
    num_attn_head: int = 8

    @property
    def grid(self) -> int:
        return self.initial_resolution

    @classmethod
    def from_yaml(cls, path: str | Path) -> VisionTokenizerConfig:
        raw = yaml.safe_load(Path(path).read_text())
        if "ckpt_path" in raw:
            raise ValueError(f"{path}: a top-level ckpt_path is not supported; put it under params")
        params = dict(raw["params"])
        dd = dict(params.pop("ddconfig"))
        dd.pop("double_z", None)  # always False for Libra; no variance channels
        known = set(cls.__dataclass_fields__)
        merged = {**params, **dd, "max_vision_token_length": raw.get("max_vision_token_length", 578)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"{path}: unknown vision tokenizer settings {unknown}")
        cfg = cls(**merged)
        grid = cfg.grid
        if cfg.max_vision_token_length != grid * grid + 2:
            raise ValueError(
                f"{path}: max_vision_token_length={cfg.max_vision_token_length} but the "
                f"{grid}x{grid} grid needs {grid * grid + 2} (patches + boi + eoi)"
            )
        return cfg

    def to_yaml_dict(self) -> dict:
        dd = {
            "encoder_name": self.encoder_name,
            "select_layer": list(self.select_layer),
            "double_z": False,
            "z_channels": self.z_channels,
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "out_ch": self.out_ch,
            "ch": self.ch,
            "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions),
            "dropout": self.dropout,
            "initial_resolution": self.initial_resolution,
            "num_attn_head": self.num_attn_head,
        }
        params = {
            "embed_dim": self.embed_dim,
            "ckpt_path": self.ckpt_path,
            "codebook_size": self.codebook_size,
            "num_codebook": self.num_codebook,
            "ddconfig": dd,
        }
        return {"freeze": True, "max_vision_token_length": self.max_vision_token_length, "params": params}


@dataclass
class VisionTokens:
    """Tokenised images: ``indices`` (n, g*g, K) int64 in raster order; ``features`` (n, g*g, F)."""

    indices: torch.Tensor
    features: torch.Tensor


class VisionTokenizer(nn.Module):
    """CLIP + quant conv + LFQ + post-quant conv + pixel decoder, frozen."""

    def __init__(self, config: VisionTokenizerConfig, clip_config: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = config
        clip_config = copy.deepcopy(clip_config)
        clip_config._attn_implementation = "sdpa"
        self.clip = CLIPVisionModel(clip_config)
        width = clip_config.hidden_size
        if max(config.select_layer) > clip_config.num_hidden_layers or min(config.select_layer) < 0:
            raise ValueError(
                f"select_layer {config.select_layer} out of range for a CLIP with "
                f"{clip_config.num_hidden_layers} layers"
                f" (hidden-state indices 0..{clip_config.num_hidden_layers})"
            )
        grid = clip_config.image_size // clip_config.patch_size
        if grid != config.grid:
            raise ValueError(
                f"CLIP grid {grid}x{grid} (image {clip_config.image_size}, patch {clip_config.patch_size}) "
                f"!= initial_resolution {config.grid} of the vision tokenizer config"
            )
        self.feature_size = width * len(config.select_layer)
        self.quant_conv = nn.Conv2d(self.feature_size, config.embed_dim, 1)
        self.quantize = LookupFreeQuantizer(config.embed_dim, config.codebook_size, config.num_codebook)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = PixelDecoder(
            z_channels=config.z_channels,
            ch=config.ch,
            ch_mult=list(config.ch_mult),
            num_res_blocks=config.num_res_blocks,
            attn_resolutions=list(config.attn_resolutions),
            resolution=config.resolution,
            initial_resolution=config.initial_resolution,
            num_attn_head=config.num_attn_head,
            out_ch=config.out_ch,
            dropout=config.dropout,
        )
        self.freeze()

    # ---- frozen by construction ---------------------------------------------------------------
    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VisionTokenizer:
        # The tokenizer is never trained here: stay in eval mode whatever the caller's model does.
        return super().train(False)

    @property
    def grid(self) -> int:
        return self.config.grid

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    # ---- encoding -----------------------------------------------------------------------------
    def clip_hidden_states(self, pixels: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Hidden states 0..upto (index 0 = embeddings after pre_layrnorm), each (n, 1 + g*g, width).

        Layers above ``upto`` (default: the highest selected layer) are not run.
        """
        clip = getattr(self.clip, "vision_model", self.clip)  # transformers <5 nests the tower
        upto = max(self.config.select_layer) if upto is None else upto
        h = clip.pre_layrnorm(clip.embeddings(pixels.to(self.dtype)))
        states = [h]
        for layer in clip.encoder.layers[:upto]:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
            states.append(h)
        return states

    def continuous_signal(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, R, R) pixels → (n, g*g, F) selected CLIP layers concatenated, CLS dropped."""
        states = self.clip_hidden_states(pixels)
        return torch.cat([states[i] for i in self.config.select_layer], dim=-1)[:, 1:]

    def features_to_latent(self, features: torch.Tensor) -> torch.Tensor:
        """(n, g*g, F) → ``quant_conv`` output (n, embed_dim, g, g)."""
        grid = self.grid
        x = features.transpose(1, 2).unflatten(-1, (grid, grid))  # (n, F, g, g)
        return self.quant_conv(x)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> VisionTokens:
        """(n, 3, R, R) CLIP-normalised pixels → LFQ indices (n, g*g, K) and features (n, g*g, F)."""
        expected = (3, self.config.resolution, self.config.resolution)
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"vision tokenizer expects pixels (n, {expected}); got {tuple(pixels.shape)}")
        pixels = pixels.to(self.device)
        # Run in the tokenizer's own dtype even inside the trainer's autocast region: a bf16 CLIP
        # flips LFQ bits near zero (docs/design.md B20), so precision is chosen by `dtype`, not by the caller.
        with torch.autocast(self.device.type, enabled=False):
            features = self.continuous_signal(pixels)
            latent = self.features_to_latent(features).flatten(2).transpose(1, 2)  # (n, g*g, E)
            return VisionTokens(indices=self.quantize.quantize(latent), features=features)

    # ---- decoding -----------------------------------------------------------------------------
    def indices_to_latent(self, indices: torch.Tensor) -> torch.Tensor:
        """(n, g*g, K) indices → code vectors (n, embed_dim, g, g)."""
        grid = self.grid
        if indices.dim() != 3 or indices.shape[1:] != (grid * grid, self.config.num_codebook):
            raise ValueError(
                f"indices must be (n, {grid * grid}, {self.config.num_codebook}); got {tuple(indices.shape)}"
            )
        codes = self.quantize.indices_to_codes(indices.to(self.device))  # (n, g*g, E)
        return codes.transpose(1, 2).unflatten(-1, (grid, grid))

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(n, g*g, K) indices → reconstructed pixels (n, 3, R, R), roughly in [-1, 1]."""
        with torch.autocast(self.device.type, enabled=False):
            return self.decoder(self.post_quant_conv(self.indices_to_latent(indices)))

    # ---- identity for caches ------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 over the encoder-side weights (CLIP, quant conv, LFQ) and the settings that change codes."""
        if getattr(self, "_fingerprint", None) is None:
            digest = hashlib.sha256(repr(self.config.select_layer).encode())
            for name, tensor in sorted(self.state_dict().items()):
                if name.startswith(("decoder.", "post_quant_conv.")):
                    continue  # the decoder does not change codes or features
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _apply(self, fn, recurse=True):
        self._fingerprint = None  # dtype/device moves may change what the weights are
        return super()._apply(fn, recurse)

    # ---- loading and saving -------------------------------------------------------------------
    def _clip_prefix(self) -> str:
        return "clip.vision_model." if hasattr(self.clip, "vision_model") else "clip."

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a ``vqgan.ckpt`` state dict: ``loss.*`` dropped, CLIP keys renamed, then strict."""
        prefix = self._clip_prefix()
        own = {}
        for key, value in state_dict.items():
            if key.startswith("loss.") or key.endswith("embeddings.position_ids"):
                continue  # training-loss leftovers; position_ids is a constant buffer
            if key.startswith(OFFICIAL_CLIP_PREFIX):
                key = prefix + key[len(OFFICIAL_CLIP_PREFIX) :]
            own[key] = value
        self._load_own(own, require_clip=True)

    def _load_own(self, own: dict[str, torch.Tensor], require_clip: bool) -> None:
        expected = {k for k in self.state_dict() if not k.endswith("position_ids")}
        if not require_clip:
            expected = {k for k in expected if not k.startswith("clip.")}
        missing, unexpected = sorted(expected - set(own)), sorted(set(own) - expected)
        if missing or unexpected:
            raise ValueError(
                f"vision tokenizer weights do not match the config: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict(own, strict=False)
        self._fingerprint = None

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32) -> VisionTokenizer:
        """Load the official layout (yaml + vqgan.ckpt + CLIP folder) or our safetensors export."""
        folder = Path(folder)
        config = VisionTokenizerConfig.from_yaml(folder / CONFIG_NAME)
        clip_dir = folder / config.encoder_name
        if not (clip_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"CLIP folder {clip_dir} is missing; copy the CLIP vision model named by "
                f"ddconfig.encoder_name ({config.encoder_name}) into {folder}"
            )
        model = cls(config, CLIPVisionConfig.from_pretrained(clip_dir))
        weights = folder / config.ckpt_path
        if weights.suffix == ".safetensors":
            own = load_file(weights)
            has_clip = any(k.startswith("clip.") for k in own)
            if not has_clip:
                clip_weights = CLIPVisionModel.from_pretrained(clip_dir).state_dict()
                own.update({model._clip_prefix() + k: v for k, v in clip_weights.items()})
            model._load_own(own, require_clip=True)
        else:
            model.load_official_state_dict(read_official_checkpoint(weights))
        return model.to(dtype)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the official ``vqgan.ckpt`` names (fp32, CPU), CLIP included."""
        prefix = self._clip_prefix()
        out = {}
        for key, value in self.state_dict().items():
            if key.endswith("embeddings.position_ids"):
                continue
            if key.startswith(prefix):
                key = OFFICIAL_CLIP_PREFIX + key[len(prefix) :]
            out[key] = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        # The official (transformers 4.38-era) CLIP stored its position ids as a persistent buffer.
        positions = self.grid * self.grid + 1  # patches + CLS
        out[OFFICIAL_CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
        return out

    def save_official_checkpoint(self, path: str | Path) -> None:
        """Write ``{"state_dict": ...}`` as the official ``vqgan.ckpt`` pickle, for the reference code."""
        torch.save({"state_dict": self.official_state_dict()}, path)

    def save_pretrained(self, folder: str | Path, preprocessor: ImagePreprocessor | None = None) -> None:
        """Write yaml + ``vision_tokenizer.safetensors`` (non-CLIP weights) + the CLIP folder, fp32."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.ckpt_path = WEIGHTS_NAME
        (folder / CONFIG_NAME).write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
        tensors = {
            k: v.detach().float().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("clip.")
        }
        save_file(tensors, folder / WEIGHTS_NAME)
        clip_dir = folder / config.encoder_name
        clip = copy.deepcopy(self.clip).float()
        clip.save_pretrained(clip_dir)
        preprocessor = preprocessor or ImagePreprocessor(size=self.config.resolution)
        (clip_dir / "preprocessor_config.json").write_text(
            json.dumps(preprocessor.to_preprocessor_config(), indent=2)
        )


def read_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an official ``vqgan.ckpt``, read without executing pickled code."""
    if not path.is_file():
        raise FileNotFoundError(f"vision tokenizer weights {path} not found (params.ckpt_path)")
    from libra.safe_load import UnsafePickleError, safe_torch_load

    try:
        # the official file is {"state_dict": OrderedDict of tensors}: nothing beyond torch's own
        # weights_only globals is needed, so nothing else is allowed
        blob = safe_torch_load(path)
    except UnsafePickleError as err:  # a damaged file (DamagedFileError) is no case for the conversion
        raise RuntimeError(
            f"{path} cannot be read safely with torch.load(weights_only=True): {err}\n"
            f"If you trust the file, convert it once to safetensors:\n"
            f"    python -m libra.tokenizer.convert_vqgan {path.parent}\n"
            f"(this writes {WEIGHTS_NAME} and points {CONFIG_NAME} at it)"
        ) from err
    return blob.get("state_dict", blob)
