"""Model zoo behind a registry. Every model describes its prunable channels (:mod:`.spec`)."""

from . import bar_wrn, mobilenet, resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (registration)
from .registry import create, describe, ensure_model, get_entry, list_models, rebuild_info, register_model
from .spec import GatedTensor, ModelSpec, Op
from .trace import TracingError, describe_traced

__all__ = ["create", "describe", "ensure_model", "get_entry", "list_models", "rebuild_info", "register_model",
           "GatedTensor", "ModelSpec", "Op", "describe_traced", "TracingError"]
