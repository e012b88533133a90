"""CNN image embedding: a CNN without its classifier, global-average pooled.

The CNNs: torchvision's ResNet-18 (512-d) and DenseNet-121 (1024-d), and two chest X-ray models of
torchxrayvision (an optional extra, ``pip install 'hybridcxr[xrv]'``, imported only when asked for):
``xrv-densenet121-res224-all`` (its DenseNet-121 trained at 224 px on eight public CXR datasets, 1024-d, the
``features2`` output: ReLU and average pooling after ``norm5``) and ``xrv-resnet50-res512-all`` (its ResNet-50
trained at 512 px, 2048-d, the pooled ``layer4`` output; set ``input_size=512`` to match). These read one
channel scaled to [-1024, 1024], the library's own scaling.

Weights come from a local file (a torchvision ``state_dict`` saved with ``torch.save``, loaded with
``weights_only=True`` so nothing is unpickled beyond tensors, or a ``.safetensors`` file), from torchvision's
ImageNet weights when they are already in the torch hub cache (or can be downloaded), or nowhere: then the
network keeps its random initialisation and one :class:`BackboneWeightsWarning` says how to supply weights.
A torchxrayvision backbone without a weights file takes the library's weights from its cache folder
(``~/.torchxrayvision/models_data/``), or downloads them there when online, with the same fallback; its
DenseNet file is a whole pickled model, read with ``weights_only=True`` allowing only torch, torchvision and
torchxrayvision module classes.
Nothing here waits on a network: with ``HYBRIDCXR_OFFLINE`` set no connection is tried,
and otherwise one short probe (bounded by :data:`PROBE_TIMEOUT_S`) decides whether to try the download.

Pixels are prepared in one place, :func:`to_backbone_input`: grey radiographs (float in [0, 1]) are
letterboxed to a square, then repeated to three channels and normalised with the ImageNet mean and std (the
torchvision CNNs), or kept as one channel scaled to [-1024, 1024] (the torchxrayvision ones).

>>> backbone = build_backbone("resnet18", weights=None)  # doctest: +SKIP
>>> embed(backbone, [radiograph.pixels]).shape  # doctest: +SKIP
(1, 512)
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import pickletools
import re
import socket
import threading
import types
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybridcxr.errors import ConfigError, InputError

BackboneName = Literal["resnet18", "densenet121", "xrv-densenet121-res224-all", "xrv-resnet50-res512-all"]
Scaling = Literal["imagenet", "xrv"]

#: Embedding width of each supported backbone (the features its classifier layer would have read).
EMBED_DIMS: dict[str, int] = {"resnet18": 512, "densenet121": 1024, "xrv-densenet121-res224-all": 1024,
                              "xrv-resnet50-res512-all": 2048}
#: The torchxrayvision backbones: their weights' name in that library and the side they were trained at.
XRV_MODELS: dict[str, tuple[str, int]] = {"xrv-densenet121-res224-all": ("densenet121-res224-all", 224),
                                          "xrv-resnet50-res512-all": ("resnet50-res512-all", 512)}
#: torchxrayvision's pixel range: black is -XRV_RANGE, white +XRV_RANGE (its ``utils.normalize``).
XRV_RANGE = 1024.0
#: torchvision's ImageNet weights of each backbone; the file name is what the torch hub cache stores.
IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
}
#: The mean and std torchvision's ImageNet weights were trained with (RGB order).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Environment variables that forbid any network access (ultralytics' own switch counts too).
OFFLINE_ENV: tuple[str, ...] = ("HYBRIDCXR_OFFLINE",)  # not YOLO_OFFLINE: hybridcxr sets that one itself
#: Seconds the connectivity probe may take, DNS look-up included, before the machine counts as offline.
PROBE_TIMEOUT_S = 2.0
DEFAULT_SIZE = 224

# Classifier layers of the torchvision models: dropped from loaded state_dicts, replaced by nn.Identity.
_CLASSIFIER = {"resnet18": "fc", "densenet121": "classifier", "xrv-densenet121-res224-all": "classifier",
               "xrv-resnet50-res512-all": "fc"}
# torchvision's DenseNet files use the old key names ("norm.1" for "norm1"); torchvision renames them the same way.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class BackboneWeightsWarning(UserWarning):
    """The backbone runs without pretrained weights (random initialisation): its embeddings mean little."""


class Backbone(nn.Module):
    """A CNN whose forward pass returns the pooled embedding ``(N, dim)`` instead of logits.

    Build one with :func:`build_backbone`, which also loads weights; the constructor alone gives a randomly
    initialised network without any warning.

    Attributes:
        name: one of :data:`EMBED_DIMS`.
        dim: embedding width (512, 1024 or 2048).
        weights_source: where the weights came from: a file path, ``"imagenet"``, ``"torchxrayvision"`` or
            ``"random"``.
        input_size: the square side :func:`embed` resizes images to.
        scaling: ``"imagenet"`` (three channels, ImageNet mean/std) or ``"xrv"`` (one channel in [-1024, 1024]).
    """

    def __init__(self, name: BackboneName = "resnet18", input_size: int = DEFAULT_SIZE) -> None:
        super().__init__()
        _check_name(name)
        body = _make_body(name)
        setattr(body, _CLASSIFIER[name], nn.Identity())
        self.body = body
        self.name: str = name
        self.dim: int = EMBED_DIMS[name]
        self.weights_source: str = "random"
        self.input_size = int(input_size)
        self.scaling: Scaling = input_scaling(name)

    def prepare(self, pixels: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Grey pixels in [0, 1] as this CNN's input batch: :func:`to_backbone_input` with its scaling."""
        return to_backbone_input(pixels, size or self.input_size, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch ``(N, 3, H, W)`` prepared by :func:`to_backbone_input` into ``(N, dim)``."""
        return self.body(x)

    def fingerprint(self) -> str:
        """A short sha256 (16 hex digits) of every state_dict tensor's bytes, the architecture and input size.

        A feature cache stores it beside the embeddings and recomputes them when it changes (other weights,
        fine-tuning, another ``input_size``), so stale features are never mixed with a new model's. Passing
        ``size=`` to :func:`embed` bypasses ``input_size``: a cache doing that must key on the size itself.
        """
        digest = hashlib.sha256(f"{self.name}|{self.input_size}|".encode())
        for key, tensor in self.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        """Write the weights as safetensors (atomically): what :func:`build_backbone` loads back, no pickle."""
        from safetensors.torch import save_file

        from hybridcxr.files import write_atomic

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
        """Load a torchvision-style state_dict (classifier keys ignored) strictly; InputError naming ``source``."""
        cleaned: dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise InputError(source, f"entry {key!r} is not a tensor: not a state_dict")
            for prefix in ("module.", "body."):
                key = key.removeprefix(prefix)
            if key.split(".", 1)[0] == _CLASSIFIER[self.name] or key == "op_threshs":  # xrv's thresholds
                continue
            if "densenet121" in self.name:
                key = _DENSENET_OLD_KEY.sub(r"\1\2", key)
            cleaned[key] = value
        own = self.body.state_dict()
        for key in set(own) - set(cleaned):
            if key.endswith("num_batches_tracked"):  # absent from torchvision's older files; unused in eval
                cleaned[key] = own[key]
        missing = sorted(set(own) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(own))
        wrong = sorted(k for k in set(own) & set(cleaned) if own[k].shape != cleaned[k].shape)
        if missing or unexpected or wrong:
            parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                     for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                     if keys]
            raise InputError(source, f"not {self.name} weights; {'; '.join(parts)}")
        self.body.load_state_dict(cleaned, strict=True)
        self.weights_source = str(source)


def build_backbone(name: BackboneName = "resnet18", weights: str | Path | None = None,
                   input_size: int = DEFAULT_SIZE, seed: int | None = None) -> Backbone:
    """Build a backbone and load its weights, never waiting on the network.

    Args:
        name: ``"resnet18"`` (512-d embedding), ``"densenet121"`` (1024-d), ``"xrv-densenet121-res224-all"``
            (1024-d) or ``"xrv-resnet50-res512-all"`` (2048-d); the last two need torchxrayvision.
        weights: a local ``state_dict`` file (``.pth``/``.pt``, loaded with ``weights_only=True``) or
            ``.safetensors`` file; ``"imagenet"`` for torchvision's ImageNet weights (from the torch hub
            cache, or downloaded when online and not forbidden by ``HYBRIDCXR_OFFLINE``);
            ``None`` for random initialisation, except for a torchxrayvision backbone, where it means the
            library's weights (from its cache folder, or downloaded like the ImageNet ones). Without weights
            one :class:`BackboneWeightsWarning` is issued.
        input_size: the square side images are resized to before embedding.
        seed: seeds the random initialisation (without touching the global RNG), so two runs with one seed
            start from the same CNN; None draws from torch's global generator.

    Returns:
        The backbone in eval mode on the CPU.

    Raises:
        ValueError: for an unknown ``name``, or ``"imagenet"`` for a torchxrayvision backbone.
        InputError: for a weights file that is missing, unreadable or of another architecture.
        ConfigError: for a torchxrayvision backbone where that library is not installed.
    """
    _check_name(name)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        backbone = Backbone(name, input_size=input_size)
    imagenet = isinstance(weights, str) and weights.lower() == "imagenet"
    if name in XRV_MODELS and imagenet:
        raise ValueError(f"{name} has no ImageNet weights: leave the weights unset for torchxrayvision's own")
    if weights is None and name not in XRV_MODELS:
        _warn_random(name, "no weights were given")
    elif weights is None or imagenet:  # a library's own weights: torchxrayvision's, or torchvision's ImageNet ones
        xrv = weights is None
        state, why = _xrv_state_dict(name) if xrv else _imagenet_state_dict(name)
        if state is None:
            _warn_random(name, why)
        else:
            backbone.load_weights(state, source=(_xrv_cache_file if xrv else _imagenet_cache_file)(name))
            backbone.weights_source = "torchxrayvision" if xrv else "imagenet"
    else:
        path = Path(weights)
        pickled_model = name in XRV_MODELS and path.suffix != ".safetensors"  # e.g. torchxrayvision's own file
        backbone.load_weights(read_torch_weights(path) if pickled_model else _read_state_dict(path), source=weights)
    return backbone.eval()


def to_backbone_input(pixels: np.ndarray | torch.Tensor, size: int = DEFAULT_SIZE,
                      scaling: Scaling = "imagenet") -> torch.Tensor:
    """Turn grey radiograph pixels into a normalised batch: ``(N, 3, size, size)``, or ``(N, 1, size, size)``
    for torchxrayvision's models.

    Each image is scaled (bilinear, antialiased) so that its longer side is ``size`` and centred on a square
    of zeros (letterbox). Letterboxing rather than a plain resize keeps the anatomy's proportions: a
    squashed or stretched chest changes the cardiothoracic ratio the model should read cardiomegaly from,
    and portrait and landscape films would otherwise be distorted differently. The zero padding is black,
    like the air and collimation around a radiograph. The grey channel is then repeated three times and
    normalised with :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`: channel ``c`` holds
    ``(pixel - IMAGENET_MEAN[c]) / IMAGENET_STD[c]``. With ``scaling="xrv"`` the grey channel stays alone and
    is scaled as torchxrayvision's ``utils.normalize`` does, ``(2 * pixel - 1) * 1024`` (black padding: -1024).

    Args:
        pixels: float pixels in [0, 1], shaped ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)``; numpy or torch.
        size: side of the square output.
        scaling: ``"imagenet"`` (torchvision's CNNs) or ``"xrv"`` (torchxrayvision's); see
            :attr:`Backbone.scaling`.

    Returns:
        A float32 tensor ``(N, 3, size, size)`` (``(N, 1, size, size)`` for ``"xrv"``) on the input's device
        (CPU for numpy input).

    Raises:
        ValueError: for another shape, integer pixels, values outside [0, 1] or NaN.
    """
    if isinstance(pixels, np.ndarray):
        array = np.ascontiguousarray(pixels)
        x = torch.from_numpy(array if array.flags.writeable else array.copy())
    else:
        x = pixels
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"pixels must be a numpy array or a torch tensor, not {type(pixels).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"pixels must be float in [0, 1], got dtype {x.dtype} (scale integer images first)")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3 and x.shape[-1] in (3, 4) and min(x.shape[:2]) > 4:
        raise ValueError(f"pixels of shape {tuple(x.shape)} look like an RGB(A) image; pass grey (H, W) pixels")
    elif x.ndim == 3:
        x = x[:, None]
    elif not (x.ndim == 4 and x.shape[1] == 1):
        raise ValueError(f"pixels must be (H, W), (N, H, W) or (N, 1, H, W) grey images, got {tuple(x.shape)}")
    n, _, h, w = x.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"pixels must not be empty, got {tuple(x.shape)}")
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # also catches NaN
        raise ValueError(f"pixels must be in [0, 1], got values from {lo} to {hi}")
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp(0.0, 1.0)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    x = F.pad(x, (left, size - new_w - left, top, size - new_h - top), value=0.0)
    if scaling == "xrv":
        return (2.0 * x - 1.0) * XRV_RANGE
    if scaling != "imagenet":
        raise ValueError(f"scaling must be imagenet or xrv, got {scaling!r}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def embed(backbone: Backbone, images: Sequence[np.ndarray | torch.Tensor], batch_size: int = 32,
          device: str | torch.device | None = None, size: int | None = None) -> np.ndarray:
    """Embed grey images (each ``(H, W)`` float in [0, 1], any size) into an ``(N, dim)`` float32 array.

    Runs in eval mode under ``torch.inference_mode()``; the backbone's training mode is restored afterwards.

    Args:
        backbone: from :func:`build_backbone`.
        images: grey radiograph pixels; sizes may differ (each is letterboxed on its own).
        batch_size: images per forward pass.
        device: where to run; default: where the backbone's parameters are.
        size: square input side; default ``backbone.input_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    size = size or backbone.input_size
    out = np.empty((len(images), backbone.dim), dtype=np.float32)
    was_training = backbone.training
    backbone.to(device).eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                batch = torch.cat([backbone.prepare(image, size) for image in chunk]).to(device)
                out[start:start + len(chunk)] = backbone(batch).float().cpu().numpy()
    finally:
        backbone.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------ weights


def input_scaling(name: str) -> Scaling:
    """How :func:`to_backbone_input` scales pixels for the backbone ``name`` (see :attr:`Backbone.scaling`)."""
    _check_name(name)
    return "xrv" if name in XRV_MODELS else "imagenet"


def _check_name(name: str) -> None:
    if name not in EMBED_DIMS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(EMBED_DIMS)}")


def _make_body(name: str) -> nn.Module:
    """The randomly initialised network of ``name``, its classifier still in place."""
    import torchvision.models as tvm

    if name == "resnet18":
        return tvm.resnet18(weights=None)
    if name == "densenet121":
        return tvm.densenet121(weights=None)
    xrv = import_xrv(name)
    if name == "xrv-densenet121-res224-all":
        return xrv.models.DenseNet(weights=None)  # one input channel, 18 outputs; forward: features2, classifier
    # xrv.models.ResNet cannot be built without its weights file: build the network it wraps, as it does.
    body = tvm.resnet50(weights=None, num_classes=len(xrv.models.model_urls[XRV_MODELS[name][0]]["labels"]))
    body.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return body


def import_xrv(name: str = "a torchxrayvision backbone"):
    """The ``torchxrayvision`` module, imported late (an optional extra); ConfigError saying how to install it.

    Its import turns every warning off process-wide (``warnings.filterwarnings("ignore")`` in its models
    module), so it is imported inside ``catch_warnings``, which puts the filters back.
    """
    with warnings.catch_warnings():
        try:
            import torchxrayvision
        except ImportError as err:
            raise ConfigError(f"backbone={name}", f"needs torchxrayvision, an optional extra ({err}): "
                                                  "pip install 'hybridcxr[xrv]'") from None
    return torchxrayvision


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file, without unpickling anything but tensors."""
    if not path.is_file():
        raise InputError(path, "no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                               "expected a torchvision state_dict (torch.save) or a .safetensors file") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise InputError(path, f"holds a {type(state).__name__}, not a state_dict")
    return dict(state)


def _imagenet_cache_file(name: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (or would keep) the ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URLS[name].rsplit("/", 1)[-1]


def _no_download(url: str, missing: str) -> str | None:
    """Why ``url`` must not be downloaded (an offline switch, or its host out of reach), or None to go ahead."""
    offline = [var for var in OFFLINE_ENV if os.environ.get(var, "").strip().lower() not in ("", "0", "false")]
    if offline:
        return f"{missing} and {offline[0]} is set"
    host = url.split("/")[2]
    if not _can_reach(host):
        return f"{missing} and {host} cannot be reached"
    return None


def _imagenet_state_dict(name: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The ImageNet state_dict from the hub cache or a download; (None, why) where neither works."""
    cached = _imagenet_cache_file(name)
    if cached.is_file():
        return _read_state_dict(cached), ""
    why = _no_download(IMAGENET_URLS[name], f"ImageNet weights are not in the torch hub cache ({cached})")
    if why is not None:
        return None, why
    try:
        state = torch.hub.load_state_dict_from_url(IMAGENET_URLS[name], map_location="cpu", progress=False,
                                                   check_hash=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a failed download falls back like an offline machine
        return None, f"downloading ImageNet weights failed ({type(err).__name__}: {err})"
    return dict(state), ""


def _xrv_url(name: str) -> str:
    return import_xrv(name).models.model_urls[XRV_MODELS[name][0]]["weights_url"]


def _xrv_cache_file(name: str) -> Path:
    """Where torchxrayvision keeps (or would keep) the weights of ``name``: its cache folder, the URL's file name."""
    return Path(import_xrv(name).utils.get_cache_dir()).expanduser() / _xrv_url(name).rsplit("/", 1)[-1]


def _xrv_state_dict(name: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """torchxrayvision's weights from its cache folder or a download into it; (None, why) where neither works."""
    cached, url = _xrv_cache_file(name), _xrv_url(name)
    if not cached.is_file():
        why = _no_download(url, f"torchxrayvision's weights are not in its cache folder ({cached})")
        if why is not None:
            return None, why
        try:
            from hybridcxr.files import write_atomic

            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, lambda tmp: torch.hub.download_url_to_file(url, str(tmp), progress=False))
        except Exception as err:  # noqa: BLE001 - a failed download falls back like an offline machine
            return None, f"downloading torchxrayvision's weights failed ({type(err).__name__}: {err})"
    return read_torch_weights(cached), ""


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a ``torch.save`` file holding a state_dict or a whole pickled model, never unpickling
    anything but tensors and torch/torchvision/torchxrayvision module classes.

    torchxrayvision's DenseNet weights are such a pickled model (that library loads them with
    ``weights_only=False``). A zip-format file is read with ``weights_only=True``, allowing the module classes
    its pickle names (found by reading its opcodes, not running them). torch's ``weights_only`` reader cannot
    read a legacy-format (torch < 1.6) pickled model, so such a file goes through a restricted unpickler
    instead (:class:`_ModuleUnpickler`: the same module classes and the tensor and container types, nothing
    else), the one place a ``torch.load`` runs without ``weights_only``.
    """
    if not path.is_file():
        raise InputError(path, "no such weights file")
    try:
        if zipfile.is_zipfile(path):
            allowed = [obj for obj in map(_module_class, _pickle_globals(path)) if obj is not None]
            with torch.serialization.safe_globals(allowed):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SourceChangeWarning: the library's classes changed since
                loaded = torch.load(path, map_location="cpu", weights_only=False,  # restricted, see above
                                    pickle_module=_RESTRICTED_PICKLE)
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise InputError(path, f"cannot read weights ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                               "expected a torch.save state_dict or model") from err
    if isinstance(loaded, nn.Module):
        for module in loaded.modules():  # pickles of torch < 1.6 lack it (as torchxrayvision patches too)
            if not hasattr(module, "_non_persistent_buffers_set"):
                module._non_persistent_buffers_set = set()
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping):
        raise InputError(path, f"holds a {type(loaded).__name__}, not a state_dict or a model")
    return dict(loaded)


_MODULE_PACKAGES = ("torch.nn.", "torchvision.models.", "torchxrayvision.")
#: What else a legacy pickled model may name: containers and torch's tensor rebuilders (storages are resolved
#: by torch's own reader before the unpickler is asked).
_PICKLE_SAFE: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict, "builtins.set": set, "__builtin__.set": set,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
}


class _ModuleUnpickler(pickle.Unpickler):
    """An unpickler that finds only :data:`_PICKLE_SAFE` and the module classes :func:`_module_class` allows."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global ``module.name``; UnpicklingError for anything else."""
        qualified = f"{module}.{name}"
        found = _PICKLE_SAFE.get(qualified) or _module_class(qualified)
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {qualified}: not a tensor, container or model layer")
        return found


_RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="hybridcxr-restricted-pickle", Unpickler=_ModuleUnpickler,
    load=lambda file, **kwargs: _ModuleUnpickler(file, **kwargs).load())


def _module_class(qualified: str):
    """The class ``qualified`` names when it is an nn.Module of torch, torchvision or torchxrayvision (or the
    backend function old torch pickles name); None otherwise (torch's unpickler then decides alone)."""
    import importlib

    module_name, _, attr = qualified.rpartition(".")
    if not qualified.startswith(_MODULE_PACKAGES):
        return None
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    if qualified == "torch.nn.backends.thnn._get_thnn_function_backend":
        return obj
    return obj if isinstance(obj, type) and issubclass(obj, nn.Module) else None


def _pickle_globals(path: Path) -> set[str]:
    """``module.name`` of every global a ``torch.save`` file's pickle refers to, read statically (not run)."""
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return _globals_in(io.BytesIO(archive.read(names[0])), 1) if names else set()
        f.seek(0)
        return _globals_in(f, 4)  # the legacy format: magic number, protocol, system info, then the object


def _globals_in(stream, pickles: int) -> set[str]:
    found: set[str] = set()
    strings: list[str] = []
    for _ in range(pickles):
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST"):
                found.add(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    return found


def _can_reach(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, DNS look-up included.

    The probe runs in a daemon thread because ``getaddrinfo`` ignores socket timeouts and can block far
    longer on a machine without a resolver; the caller never waits more than ``timeout``.
    """
    reached: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached.append(True)
        except BaseException:  # noqa: BLE001 - any failure means "offline"; nothing may escape the thread
            pass

    thread = threading.Thread(target=probe, name="hybridcxr-net-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


def _warn_random(name: str, why: str) -> None:
    if name in XRV_MODELS:
        cache = _xrv_cache_file(name)
        warnings.warn(BackboneWeightsWarning(
            f"{name}: using randomly initialised weights because {why}; its embeddings carry little information. "
            f"Copy {_xrv_url(name)} to {cache} (torchxrayvision's cache folder), or supply weights='/path/to/"
            f"{cache.name}'."), stacklevel=3)
        return
    cache = _imagenet_cache_file(name)
    warnings.warn(BackboneWeightsWarning(
        f"{name}: using randomly initialised weights because {why}; its embeddings carry little information. "
        f"Supply weights with weights='/path/to/{cache.name}' (a torchvision state_dict or a .safetensors "
        f"file), or copy {IMAGENET_URLS[name]} to {cache} and pass weights='imagenet'."
    ), stacklevel=3)
