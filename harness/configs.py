"""One typed configuration per experiment family.

A script's constants block sets the fields of its family (the UPPERCASE names are the
constants themselves, so that ``cfg.EPOCHS`` reads as the script does); the command
line overrides them (``harness.cli.configure``), a resumed run's own constants replace
them, and the checks of ``harness.cli.CHECKS`` and the family's ``check`` run once.  The
experiment then builds the engine's own configuration (``synthetic.PipelineConfig``,
``pvd.PVDConfig``, the race's ``Race``) from it.  A field the script does not set keeps
the default here and is no command-line option of that script.

    family           scripts                                  experiment
    ArchitectureRun  resTest, antiTest, verletTest, leapTest  fit_experiments.train_single
    ToyRun           ellipse, swiss                           fit_experiments.train_toy
    PipelineRun      distSg, run_standard_sg                  pipeline_experiments.distributed / standard
    MultilevelRun    distMulti, testParallelNet               pipeline_experiments.distributed_multilevel / multilevel
    PVDRun           PVD                                      pvd_experiments.train_pvd
    RaceRun          race                                     race.race_main
    ForecastRun      forecast                                 forecast.forecast_main
    StabilityRun     stability                                stability_experiments.stability_main
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every run has: its data, seed, device and where its results go."""
    DATASET: str = "MNIST"
    SEED: int = 0
    DEVICE: str = "auto"
    DATA_ROOT: str = "data"
    RESULTS_DIR: str = "results"
    script: str = field(default="", compare=False)  # the entry script's path (names the run directory)
    given: frozenset = field(default=frozenset(), repr=False, compare=False)  # constants set on the command line
    rule_options: dict = field(default_factory=dict)  # the rules' options by name (max_in_flight: 2), ``has_rules``

    #: the family trains the pipeline's rules: every registered rule's options are its
    #: constants too (synthetic.rules.cli_options; MAX_IN_FLIGHT is max_in_flight)
    has_rules = False

    def as_dict(self):
        """The constants (the UPPERCASE fields, and the rules' options in capitals) as a dict."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.isupper()},
                **{name.upper(): value for name, value in self.rule_options.items()}}

    def replace(self, **changes):
        """A copy with ``changes`` (constants; a rule's option in capitals goes to rule_options)."""
        fields = {f.name for f in dataclasses.fields(self)}
        options = {k.lower(): v for k, v in changes.items() if k not in fields and k.lower() in self.rule_options}
        unknown = [k for k in changes if k not in fields and k.lower() not in options]
        if unknown:
            raise TypeError(f"{type(self).__name__} has no constant {unknown[0]}")
        rest = {k: v for k, v in changes.items() if k in fields}
        if options:
            rest["rule_options"] = {**self.rule_options, **options}
        return dataclasses.replace(self, **rest)

    def check(self, meta):
        """The family's own checks, beyond one constant at a time (UsageError)."""


@dataclass(frozen=True, kw_only=True)
class NetworkFields:
    """The network: architecture, dense or conv, depth, step and shape."""
    CHOICE: str = "verlet"
    CONV: bool = False
    N: int = 6
    STEP: float = 0.5
    GAMMA: float = 0.01
    ACTIVATION: str = "tanh"
    WIDTH: int = 0
    UNITS: str = "8,16,32"


@dataclass(frozen=True, kw_only=True)
class TrainingFields:
    """One optimiser's training run."""
    LEARN_RATE: float = 3e-3
    OPTIMIZER: str = "adam"
    EPOCHS: int = 10
    BATCH_SIZE: int = 64
    AUGMENT: str = "auto"


@dataclass(frozen=True, kw_only=True)
class ResumableFields:
    CHECKPOINT_EVERY: int = 1
    RESUME: str = ""


@dataclass(frozen=True, kw_only=True)
class GroupFields:
    """A group of processes: threads, restarts and the testing aids that make one fail."""
    THREADS: int = 0
    MAX_RESTARTS: int = 0
    FAIL_MODE: str = "raise"


@dataclass(frozen=True, kw_only=True)
class FitFields:
    """``models.training.fit``'s schedule and the papers' regularisers."""
    LR_SCHEDULE: str = "halvings:5"
    REG_F: bool = False
    ALPHA_F: float = 1e-3
    REG_C: bool = False
    ALPHA_C: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class ArchitectureRun(NetworkFields, TrainingFields, FitFields, ResumableFields, RunConfig):
    """One architecture trained by backprop (the four architecture scripts)."""
    TRAIN_SAMPLES: int = 0


@dataclass(frozen=True, kw_only=True)
class ToyRun(ArchitectureRun):
    """The four architectures on a generated toy set (ellipse.py, swiss.py)."""
    DATASET: str = "ELLIPSE"
    ELLIPSE_POINTS: int = 500
    ELLIPSE_VALIDATION: int = 100
    SWISS_POINTS: int = 500
    VERBOSE: bool = False

    def check(self, meta):
        from .cli import check

        check(not meta.image, f"this script trains on the toy sets ELLIPSE or SWISS, got {meta.name}")


@dataclass(frozen=True, kw_only=True)
class PipelineFields(GroupFields):
    """The pipeline of M sub-networks and its decoupling rule."""
    M: int = 2
    RULE: str = "synthetic"
    SG_MODULE: str = "linear"
    EXACT_EPOCHS: int = 0
    BALANCE: str = "cost"
    FAIL_STAGE: int = -1
    FAIL_EPOCH: int = 1


@dataclass(frozen=True, kw_only=True)
class PipelineRun(NetworkFields, TrainingFields, ResumableFields, PipelineFields, RunConfig):
    """The pipeline trained with one rule (distSg.py in processes, run_standard_sg.py serially)."""

    has_rules = True


@dataclass(frozen=True, kw_only=True)
class MultilevelRun(NetworkFields, TrainingFields, ResumableFields, PipelineFields, RunConfig):
    """Coarse-to-fine pipeline training (distMulti.py, testParallelNet.py): EPOCHS_C epochs of
    the coarse network (M x N layers, step STEP_C), then EPOCHS_F of the prolonged one."""

    has_rules = True
    N: int = 2
    STEP_C: float = 1.0
    LEARN_RATE_C: float = 3e-3
    EPOCHS_C: int = 5
    STEP_F: float = 0.5
    LEARN_RATE_F: float = 1e-3
    EPOCHS_F: int = 5
    PROLONG: str = "interpolate"


@dataclass(frozen=True, kw_only=True)
class PVDRun(NetworkFields, TrainingFields, ResumableFields, GroupFields, RunConfig):
    """Parallel Variable Distribution (PVD.py): NUM_PROC blocks of layers, one processor each."""
    DATASET: str = "ELLIPSE"
    N: int = 8
    WIDTH: int = 4
    NUM_PROC: int = 2
    PARALLEL: bool = True
    ITERATIONS: int = 30
    EPOCHS: int = 1
    STEPS: int = 0
    TARGET_ACC: float = 0.99
    SYNC: str = "best"
    DIRECTION_BATCHES: int = 0
    SYNC_BATCHES: int = 0
    TRAIN_CLASSIFIER: bool = True
    LEARN_RATE: float = 0.01
    BATCH_SIZE: int = 50
    FAIL_RANK: int = -1
    FAIL_ITERATION: int = 1


@dataclass(frozen=True, kw_only=True)
class RaceRun(NetworkFields, RunConfig):
    """The race (race.py): every trainer on one network, accuracy against wall-clock time."""
    DATASET: str = "FASHION"
    N: int = 16
    WIDTH: int = 784
    TRAIN_SAMPLES: int = 10000
    BATCH_SIZE: int = 128
    LEARN_RATE: float = 1e-3
    EPOCHS: int = 5
    POINTS_PER_EPOCH: int = 2
    TRAINERS: str = "bp-all"
    TARGET: str = "bp-0.5"
    SEEDS: str = "0"
    PROCESSES: int = 2
    THREADS: int = 0
    MICROBATCHES: int = 4
    COARSE_EPOCHS: int = 1

    has_rules = True

    def check(self, meta):
        from .race import check_race

        check_race(self, meta)


@dataclass(frozen=True, kw_only=True)
class ForecastRun(NetworkFields, RunConfig):
    """Each trainer's seconds per epoch on M devices, from a profile taken here (forecast.py)."""
    DATASET: str = "FASHION"
    N: int = 16
    WIDTH: int = 784
    TRAIN_SAMPLES: int = 0
    BATCH_SIZE: int = 128
    TRAINERS: str = "bp-all"
    DEVICES: str = "1,2,4,8,16"
    LINK: str = "nvlink4"
    OTHER_LINK: str = ""
    MICROBATCHES: int = 4
    VALIDATE: bool = False
    VALIDATE_SAMPLES: int = 1024
    VALIDATE_PARTS: str = "real,sleep"
    VALIDATE_RUNS: int = 3
    REPEATS: int = 5
    SCHEDULE_OVERHEAD: bool = True
    VARY: bool = True
    EPOCHS: int = 0
    LEARN_RATE: float = 1e-3
    TARGET_POINTS: float = 0.5

    has_rules = True

    def check(self, meta):
        from .forecast import check_forecast

        check_forecast(self)


@dataclass(frozen=True, kw_only=True)
class StabilityRun(NetworkFields, FitFields, RunConfig):
    """The stability study (stability.py): dense networks of DEPTHS layers, h = FINAL_TIME / N."""
    DATASET: str = "DIGITS"
    DEPTHS: str = "4,8,16,32,64"
    FINAL_TIME: float = 4.0
    EPOCHS: int = 8
    LEARN_RATE: float = 3e-3
    OPTIMIZER: str = "adam"
    LR_SCHEDULE: str = "constant"
    BATCH_SIZE: int = 64
    SAMPLES: int = 32
    POWER_ITERATIONS: int = 20
    SINGULAR_POINTS: int = 5
    SPECTRA_DEPTH: int = 16
    SPECTRA_SAMPLES: int = 8
    PHASE_STEP: float = 0.1
    PHASE_LAYERS: int = 10
    PHASE_GRID: int = 7


__all__ = ["ArchitectureRun", "MultilevelRun", "PVDRun", "PipelineRun", "RaceRun", "RunConfig", "StabilityRun",
           "ToyRun"]
