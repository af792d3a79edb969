"""Stable architectures (Haber & Ruthotto 2017), their registry and the training loop."""
from .architectures import AntisymmetricResNet, HamiltonianNet, LeapfrogNet, ResNet
from .base import ACTIVATIONS, PROLONG_METHODS, LayeredNet, StableNet, split_layers
from .units import Connective, MultiUnitNet

MODELS = {
    "resnet": ResNet,
    "antisymmetric": AntisymmetricResNet,
    "verlet": HamiltonianNet,
    "leapfrog": LeapfrogNet,
}
# The original scripts' one-letter choices.
ALIASES = {"r": "resnet", "a": "antisymmetric", "v": "verlet", "l": "leapfrog",
           "hamiltonian": "verlet", "antisym": "antisymmetric"}


def model_name(choice):
    """Full registry name of an architecture choice ("v" -> "verlet"); ValueError if unknown."""
    key = str(choice).strip().lower()
    key = ALIASES.get(key, key)
    if key not in MODELS:
        valid = ", ".join(f"{k} ({a})" for a, k in ALIASES.items() if len(a) == 1)
        raise ValueError(f"unknown architecture {choice!r}; valid: {valid}")
    return key


def build_model(choice, in_shape, num_classes, n_layers, h, *, gamma=0.01, units=None, **kwargs):
    """Instantiate an architecture by name or letter; gamma is used by the antisymmetric one.

    ``units`` (conv only): the channels of each unit.  Two or more give a MultiUnitNet of
    n_layers in all; one gives the single-block StableNet with that many channels."""
    name = model_name(choice)
    if name == "antisymmetric":
        kwargs["gamma"] = gamma
    if units is not None and kwargs.get("conv"):
        units = tuple(units)
        if len(units) > 1:
            kwargs.pop("conv")
            kwargs.pop("channels", None)
            return MultiUnitNet(MODELS[name], in_shape, num_classes, n_layers, h, units=units, **kwargs)
        kwargs["channels"] = units[0]
    return MODELS[name](in_shape, num_classes, n_layers, h, **kwargs)


__all__ = ["ACTIVATIONS", "ALIASES", "MODELS", "PROLONG_METHODS", "AntisymmetricResNet", "Connective",
           "HamiltonianNet", "LayeredNet", "LeapfrogNet", "MultiUnitNet", "ResNet", "StableNet", "build_model",
           "model_name", "split_layers"]
