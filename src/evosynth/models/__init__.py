"""A small model registry: name -> factory(num_classes, input_shape, **args)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import UserError
from .alexnet import AlexNetCifar
from .detectnet import detectnet, detectnet_small
from .lenet import LeNet5, LeNet300
from .resnet import resnet56
from .vit import ViT

Factory = Callable[..., nn.Module]

REGISTRY: dict[str, Factory] = {
    "lenet5": LeNet5,
    "lenet300": LeNet300,
    "resnet56": resnet56,
    "alexnet-cifar": AlexNetCifar,
    "detectnet": detectnet,
    "detectnet-small": detectnet_small,
    "vit": ViT,
}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make a model factory available to configs and the CLI by name."""

    def deco(factory: Factory) -> Factory:
        REGISTRY[name] = factory
        return factory

    return deco


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...],
                args: dict[str, Any] | None = None) -> nn.Module:
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        return REGISTRY[name](num_classes=num_classes, input_shape=input_shape, **(args or {}))
    except TypeError as exc:
        raise UserError(f"model {name!r}: bad model_args: {exc}") from None
