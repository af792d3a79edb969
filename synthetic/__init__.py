"""Pipelines of a complex network (sub-networks of a stable architecture): synthetic
gradients (Jaderberg et al. 2016) and the other decoupling rules, serial, multilevel and
one stage per process."""
from .complex import ComplexNet
from .modules import SG_MODULES, SyntheticGradient
from .pipeline import PipelineConfig, train_serial
from .rules import RULES

__all__ = ["RULES", "SG_MODULES", "ComplexNet", "PipelineConfig", "SyntheticGradient", "train_serial"]
