"""Synthetic-gradient training (Jaderberg et al. 2016): serial, multilevel, distributed."""
from .complex import ComplexNet
from .modules import SG_MODULES, SyntheticGradient
from .train import SGTrainer, train_serial

__all__ = ["SG_MODULES", "ComplexNet", "SGTrainer", "SyntheticGradient", "train_serial"]
