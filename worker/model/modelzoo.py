"""torchvision classification models by name, with their weights and labels.

Weights: 'imagenet' (torchvision's pretrained weights, downloaded once and cached), 'none'
(random init, seeded so every worker builds the same model), or a path to a checkpoint this
project wrote or a plain torchvision state dict. Files always load with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from contract.calibration import Calibration
from worker.model.preprocess import Preprocessing

CHECKPOINT_FORMAT = 1
NONE_SEED = 0


class ModelError(RuntimeError):
    """The model cannot be built or loaded; the message says what to do."""


IMAGENET_STEM = "imagenet"  # torchvision's own first layers
SMALL_STEM = "small"  # a 3x3 stride-1 convolution and no max-pool: for inputs under ~64 px
SMALL_STEM_STRIDE2 = "small-stride2"  # the same at stride 2: a quarter of the compute
STEM_STRIDES = {SMALL_STEM: 1, SMALL_STEM_STRIDE2: 2}


@dataclass
class LoadedModel:
    arch: str
    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    calibration: Calibration = field(default_factory=Calibration)
    stem: str = IMAGENET_STEM


def has_resnet_stem(model: nn.Module) -> bool:
    """A ResNet-family stem (ResNet, ResNeXt, Wide ResNet): ``conv1`` then ``maxpool``."""
    conv = getattr(model, "conv1", None)
    return isinstance(conv, nn.Conv2d) and isinstance(getattr(model, "maxpool", None), nn.Module)


def use_imagenet_stem(model: nn.Module) -> None:
    """Give a ResNet-family ``model`` torchvision's own stem again (7x7 stride 2 and a 3x3
    max-pool, new random weights): the cheapest, for inputs of 128 px and more, or when the
    budget holds too few epochs of a finer one."""
    if not has_resnet_stem(model):
        raise ModelError(f"{type(model).__name__} has no ResNet stem to replace")
    old = model.conv1
    assert isinstance(old, nn.Conv2d)
    conv = nn.Conv2d(old.in_channels, old.out_channels, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def use_small_stem(model: nn.Module, stem: str = SMALL_STEM) -> None:
    """Give a ResNet-family ``model`` a small-input stem (in place, new random weights for
    the first convolution): ImageNet's 7x7 stride-2 convolution and max-pool shrink a 32 px
    image to 8x8 before the first block and 1x1 before the head; ``small`` keeps 32x32
    there, ``small-stride2`` 16x16."""
    if not has_resnet_stem(model):
        raise ModelError(f"{type(model).__name__} has no ResNet stem to replace")
    old = model.conv1
    assert isinstance(old, nn.Conv2d)
    stride = STEM_STRIDES[stem]
    conv = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv
    model.maxpool = nn.Identity()


def classification_models() -> list[str]:
    return sorted(list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    if arch not in classification_models():
        raise ModelError(
            f"unknown model {arch!r}; choose a torchvision classification model, e.g. "
            "resnet18, resnet50, efficientnet_b0 (see torchvision.models.list_models())"
        )


def _default_weights(arch: str) -> Any:
    return get_model_weights(arch).DEFAULT


def imagenet_categories(arch: str) -> list[str]:
    """ImageNet labels from torchvision's weight metadata (no download needed)."""
    return list(_default_weights(arch).meta["categories"])


def base_classes(arch: str, weights: str) -> list[str]:
    """The class names of the base model ``arch`` with ``weights``, without building it for
    'imagenet' and 'none' (the names come with torchvision's weights metadata)."""
    if weights in ("imagenet", "none"):
        return imagenet_categories(arch)
    return load_file(Path(weights), arch).classes


def weights_preprocessing(arch: str) -> Preprocessing:
    """The eval transform the pretrained weights were made with (resnet50 V2: resize 232)."""
    transforms = _default_weights(arch).transforms()
    return Preprocessing(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )


def build(arch: str, weights: str) -> LoadedModel:
    """Build ``arch`` with ``weights`` ('imagenet' | 'none' | path), on the CPU, in eval mode."""
    check_arch(arch)
    if weights == "imagenet":
        model = _pretrained(arch)
        loaded = LoadedModel(arch, model, imagenet_categories(arch), weights_preprocessing(arch))
    elif weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(NONE_SEED)
            model = get_model(arch, weights=None)
        loaded = LoadedModel(arch, model, imagenet_categories(arch), Preprocessing())
    else:
        loaded = load_file(Path(weights), arch)
    loaded.model.eval()
    return loaded


def _pretrained(arch: str) -> nn.Module:
    try:
        return get_model(arch, weights=_default_weights(arch))
    except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
        raise ModelError(
            f"could not fetch torchvision's ImageNet weights for {arch} ({exc}). "
            f"Without internet, pass a weights file: --weights /path/to/{arch}.pth "
            "(a torchvision state dict, e.g. copied from ~/.cache/torch/hub/checkpoints on a "
            "machine that is online) or --weights none for random init (smoke tests only)."
        ) from exc


def load_file(path: Path, arch: str) -> LoadedModel:
    """A checkpoint this project wrote (dict with arch/classes/state_dict) or a state dict."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"refused to load {path}: not a safe weights file ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        return from_checkpoint(data, str(path))
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        model = get_model(arch, weights=None)
        head = head_linear(model)
        num_classes = int(data[f"{head_name(model)}.weight"].shape[0]) if head else 1000
        if num_classes != 1000:
            model = with_new_head(model, num_classes)
        _load_state(model, data, str(path))
        classes = (
            imagenet_categories(arch)
            if num_classes == 1000
            else [f"class_{i}" for i in range(num_classes)]
        )
        return LoadedModel(arch, model, classes, weights_preprocessing(arch))
    raise ModelError(f"{path} is neither a checkpoint of this project nor a state dict")


def from_checkpoint(data: dict[str, Any], origin: str) -> LoadedModel:
    try:
        arch = str(data["arch"])
        classes = [str(c) for c in data["classes"]]
        state = data["state_dict"]
        prep = Preprocessing.from_dict(dict(data.get("preprocessing") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{origin}: malformed checkpoint ({exc})") from exc
    check_arch(arch)
    stem = str(data.get("stem", IMAGENET_STEM))
    if stem != IMAGENET_STEM and stem not in STEM_STRIDES:
        raise ModelError(f"{origin}: unknown stem {stem!r}")
    model = with_new_head(get_model(arch, weights=None), len(classes))
    if stem in STEM_STRIDES:
        use_small_stem(model, stem)
    _load_state(model, state, origin)
    calibration = Calibration.from_dict(data.get("calibration"))
    return LoadedModel(arch, model, classes, prep, calibration, stem)


def checkpoint_dict(loaded: LoadedModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`from_checkpoint` reads: only tensors and plain data (weights_only-safe)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": loaded.arch,
        "classes": list(loaded.classes),
        "preprocessing": loaded.preprocessing.to_dict(),
        "calibration": loaded.calibration.to_dict(),
        "stem": loaded.stem,
        "state_dict": {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()},
        **(extra or {}),
    }


def _load_state(model: nn.Module, state: Any, origin: str) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(f"{origin}: weights do not fit the model ({exc})") from exc


# --- the classification head ------------------------------------------------------------------


def head_name(model: nn.Module) -> str:
    """Dotted name of the final Linear layer (``fc`` for ResNets, ``classifier.1``, ...)."""
    last = ""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if not last:
        raise ModelError(f"{type(model).__name__} has no Linear head to replace")
    return last


def head_linear(model: nn.Module) -> nn.Linear | None:
    module = model.get_submodule(head_name(model))
    return module if isinstance(module, nn.Linear) else None


def with_new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final Linear layer with one of ``num_classes`` outputs (in place)."""
    name = head_name(model)
    old = model.get_submodule(name)
    assert isinstance(old, nn.Linear)
    if old.out_features == num_classes:
        return model
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(old.in_features, num_classes))
    return model


def ensure_weights(arch: str, weights: str) -> None:
    """Fail fast, before any worker starts, when the weights cannot be had.

    For 'imagenet' this downloads the file into torch's cache if it is not there yet (without
    loading it), so a worker never discovers at its first batch that it is offline.
    """
    check_arch(arch)
    if weights == "none":
        return
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise ModelError(f"weights file not found: {weights}")
        return
    url = _default_weights(arch).url
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:
        raise ModelError(
            f"could not fetch torchvision's ImageNet weights for {arch} from {url} ({exc}). "
            f"Without internet, pass a weights file: --weights /path/to/{Path(url).name} "
            f"(copy it from ~/.cache/torch/hub/checkpoints/ on a machine that is online), "
            "or --weights none for random init (smoke tests only)."
        ) from exc
