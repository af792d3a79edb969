"""A script's constants: read from its UPPERCASE assignments, overridden on the command line,
and checked, each constant in one place (``CHECKS``).  A bad value raises UsageError,
which the entry point reports on one line with exit status 2."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import os
import tokenize
import typing
from pathlib import Path

TRUE, FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


class UsageError(Exception):
    """A bad constant or argument: reported on one line, exit status 2."""


def check(condition, message):
    if not condition:
        raise UsageError(message)


# ---- the command line ------------------------------------------------------------------

def _parse_bool(text):
    low = str(text).strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {text!r}")


_PARSERS = {bool: _parse_bool, int: int, float: float, str: str}


def constants_of(script_file, namespace):
    """(name, default, comment) of each constant of a script: a top-level assignment
    ``NAME = value  # comment`` (read with ast and tokenize), in the script's order."""
    source = Path(script_file).read_text()
    comments = {tok.start[0]: tok.string[1:].strip() for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper() and name in namespace and node.end_lineno in comments:
                found.append((name, namespace[name], comments[node.end_lineno]))
    return found


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def _field_types(family):
    hints = typing.get_type_hints(family)
    return {f.name: hints[f.name] for f in dataclasses.fields(family) if f.name.isupper()}


def _constant(family, name, value, types):
    """A script constant as its field's type (an int where a float is declared is one)."""
    if name not in types:
        raise TypeError(f"constant {name} is not a field of {family.__name__} (harness/configs.py)")
    kind = types[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"constant {name} = {value!r} is not a {kind.__name__} ({family.__name__})")
    return value


def rule_options():
    """{CONSTANT: (type, default, help)} of every registered rule's options (the rules
    that have one named in its help, when not all do)."""
    from synthetic.rules import REGISTRY, cli_options

    found = {}
    for name, (f, rules) in cli_options().items():
        kind = typing.get_type_hints(REGISTRY[rules[0]])[name]
        which = "" if len(rules) == len(REGISTRY) else f" [{', '.join(rules)}]"
        found[name.upper()] = (kind, f.default, f.metadata["help"] + which)
    return found


def configure(family, script_file, namespace, argv=None, doc=None):
    """The run's configuration: ``family`` (harness.configs) with the script's UPPERCASE
    constants as its fields, each overridable as --lower-name value; a family with rules
    (``has_rules``) takes every registered rule's options as well (the script's constant
    of that name is its default)."""
    types = _field_types(family)
    options = rule_options() if family.has_rules else {}
    parser = _Parser(
        prog=Path(script_file).name, description=(doc or "").strip().split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    given = _Parser(prog=Path(script_file).name, argument_default=argparse.SUPPRESS, add_help=False)

    def add(name, kind, default, help):
        flag = "--" + name.lower().replace("_", "-")
        parser.add_argument(flag, dest=name, type=_PARSERS[kind], default=default, metavar=kind.__name__.upper(),
                            help=help.replace("%", "%%"))
        given.add_argument(flag, dest=name, type=_PARSERS[kind])

    constants = {name: (default, comment) for name, default, comment in constants_of(script_file, namespace)}
    for name, (default, comment) in constants.items():
        if name in options:
            kind, _, help = options[name]
            add(name, kind, _constant(family, name, default, {name: kind}), help)
        else:
            value = _constant(family, name, default, types)
            add(name, types[name], value, comment)
    for name, (kind, default, help) in options.items():
        if name not in constants:
            add(name, kind, default, help)
    values = vars(parser.parse_args(argv))
    fields = {k: v for k, v in values.items() if k not in options}
    return family(**fields, rule_options={k.lower(): v for k, v in values.items() if k in options},
                  script=str(script_file), given=frozenset(vars(given.parse_known_args(argv)[0])))


# ---- values with a meaning beyond their type -------------------------------------------

def int_list(text, name, what="positive integers"):
    """"16,32,64" -> (16, 32, 64); UsageError naming ``name`` if it is not such a list."""
    try:
        values = tuple(int(c) for c in str(text).split(",") if c.strip())
    except ValueError:
        values = ()
    check(values and min(values) >= 1, f"{name} must be {what} separated by commas, such as 16,32,64; "
                                       f"got {text!r}")
    return values


def unit_channels(cfg):
    """UNITS as a tuple of channel counts."""
    return int_list(cfg.UNITS, "UNITS", "channel counts")


def augmenting(cfg, meta):
    """Whether AUGMENT asks for random crops and flips: auto means on CIFAR-10 only (the
    papers' practice), off for the digit and clothing sets."""
    value = str(getattr(cfg, "AUGMENT", "0")).strip().lower()  # the race has none: no augmentation
    return meta.name == "CIFAR10" if value == "auto" else value in TRUE


# ---- validation: one check per constant ------------------------------------------------

def _at_least(low, what=""):
    def rule(name, value, cfg, meta):
        check(value >= low, f"{name}{what} must be >= {low}, got {value}")
    return rule


def _positive(what=""):
    def rule(name, value, cfg, meta):
        check(value > 0, f"{name}{what} must be > 0, got {value}")
    return rule


def _one_of(valid):
    def rule(name, value, cfg, meta):
        choices = valid() if callable(valid) else valid
        check(value in choices, f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return rule


def _layers(cfg):
    """The layers of the whole network: N, times M for the synthetic-gradient scripts."""
    return cfg.N * getattr(cfg, "M", 1)


def _schedule(name, value, cfg, meta):
    from models.training import schedule_factor

    try:
        schedule_factor(value, 1, 1)
    except ValueError as exc:
        raise UsageError(f"LR_SCHEDULE: {exc}") from None


def _conv(name, value, cfg, meta):
    import datasets

    check(not value or meta.image,
          f"CONV needs an image dataset; {meta.name} has {meta.features} plain features "
          f"(image sets: {', '.join(n for n, i in datasets.INFO.items() if i.image)})")


def _units(name, value, cfg, meta):
    if not cfg.CONV:
        return
    units = unit_channels(cfg)
    check(_layers(cfg) >= len(units), f"UNITS has {len(units)} units but the network has {_layers(cfg)} layers "
                                      "(at least one per unit)")
    check(min(meta.shape[1:]) >> (len(units) - 1) >= 1,
          f"UNITS: {len(units)} units pool the {meta.shape[1]}x{meta.shape[2]} images {len(units) - 1} times, "
          "too many")


def _augment(name, value, cfg, meta):
    check(str(value).lower() in ("auto", *TRUE, *FALSE), f"AUGMENT must be auto, 1 or 0, got {value!r}")
    check(not augmenting(cfg, meta) or meta.image, f"AUGMENT crops and flips images; {meta.name} has none")


def _data_root(name, value, cfg, meta):
    root = Path(value)
    check(not meta.needs_files or not root.exists() or (root.is_dir() and os.access(root, os.R_OK | os.X_OK)),
          f"DATA_ROOT {str(root)!r} is not a readable directory")


def _num_proc(name, value, cfg, meta):
    check(value >= 1, f"NUM_PROC must be >= 1, got {value}")
    check(value <= cfg.N, f"NUM_PROC ({value}) cannot exceed the number of layers N ({cfg.N})")


def depths_of(cfg):
    """DEPTHS ("4,8,16") as the sorted depths; UsageError if it holds no depths >= 1."""
    try:
        depths = sorted({int(d) for d in str(cfg.DEPTHS).split(",") if d.strip()})
    except ValueError:
        raise UsageError(f"DEPTHS must be comma-separated integers, got {cfg.DEPTHS!r}") from None
    check(depths and depths[0] >= 1, f"DEPTHS must hold layer counts >= 1, got {cfg.DEPTHS!r}")
    return depths


def _depths(name, value, cfg, meta):
    depths_of(cfg)


def _spectra_depth(name, value, cfg, meta):
    depths = depths_of(cfg)
    check(value in depths, f"SPECTRA_DEPTH {value} is not one of DEPTHS {depths}")


def _names(module, attribute):
    def valid():
        import importlib

        return tuple(getattr(importlib.import_module(module), attribute))
    return valid


CHECKS = {
    "N": _at_least(1, " (layers)"),
    "STEP": _positive(" (the step size h)"),
    "STEP_C": _positive(" (the step size h)"),
    "STEP_F": _positive(" (the step size h)"),
    "BATCH_SIZE": _at_least(1),
    "EPOCHS": _at_least(0),
    "EPOCHS_C": _at_least(0),
    "EPOCHS_F": _at_least(0),
    "LEARN_RATE": _positive(),
    "LEARN_RATE_C": _positive(),
    "LEARN_RATE_F": _positive(),
    "LR_SCHEDULE": _schedule,
    "ACTIVATION": _one_of(_names("models", "ACTIVATIONS")),
    "GAMMA": _at_least(0),
    "OPTIMIZER": _one_of(_names("models.training", "OPTIMIZERS")),
    "WIDTH": _at_least(0),
    "CONV": _conv,
    "UNITS": _units,
    "AUGMENT": _augment,
    "DATA_ROOT": _data_root,
    "ELLIPSE_POINTS": _at_least(1),
    "ELLIPSE_VALIDATION": _at_least(1),
    "SWISS_POINTS": _at_least(2),
    "THREADS": _at_least(0),
    "CHECKPOINT_EVERY": _at_least(0),
    "MAX_RESTARTS": _at_least(0),
    "FAIL_MODE": _one_of(("raise", "kill")),
    # synthetic gradients
    "M": _at_least(2, " (sub-networks)"),
    "SG_MODULE": _one_of(_names("synthetic.modules", "SG_MODULES")),
    "PROLONG": _one_of(_names("models", "PROLONG_METHODS")),
    "BALANCE": _one_of(_names("synthetic.balance", "BALANCE_MODES")),
    "RULE": _one_of(_names("synthetic.rules", "RULES")),
    "EXACT_EPOCHS": _at_least(0),
    # the race (harness/race.py checks TRAINERS, TARGET and SEEDS)
    "TRAIN_SAMPLES": _at_least(0),
    "POINTS_PER_EPOCH": _at_least(1),
    "PROCESSES": _at_least(2),
    "MICROBATCHES": _at_least(1),
    "COARSE_EPOCHS": _at_least(1),
    # forecast.py (harness/forecast.py checks DEVICES, LINK and TRAINERS)
    "TARGET_POINTS": _at_least(0),
    "VALIDATE_SAMPLES": _at_least(1),
    "VALIDATE_RUNS": _at_least(1),
    "REPEATS": _at_least(1),
    # PVD
    "NUM_PROC": _num_proc,
    "ITERATIONS": _at_least(1),
    "SYNC": _one_of(_names("pvd.algorithm", "SYNC_RULES")),
    # stability
    "DEPTHS": _depths,
    "SPECTRA_DEPTH": _spectra_depth,
    "FINAL_TIME": _positive(),
    "PHASE_STEP": _positive(),
    "SAMPLES": _at_least(2),
    "POWER_ITERATIONS": _at_least(1),
    "SINGULAR_POINTS": _at_least(2),
    "SPECTRA_SAMPLES": _at_least(1),
    "PHASE_LAYERS": _at_least(1),
    "PHASE_GRID": _at_least(2),
}


def _check_rule_options(cfg):
    from synthetic.rules import cli_options

    declared = cli_options()
    for name, value in cfg.rule_options.items():
        problem = declared[name][0].metadata.get("check") if name in declared else None
        message = problem(value) if problem is not None else None
        check(message is None, f"{name.upper()} {message}")


def validate(cfg):
    """Check every constant of ``cfg`` and its family's own rule; return (DataInfo,
    architecture name, device)."""
    import datasets
    from models import model_name
    from models.devices import pick_device

    try:
        meta = datasets.info(cfg.DATASET)
        arch = model_name(cfg.CHOICE)
        device = pick_device(cfg.DEVICE)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    values = cfg.as_dict()
    for name, rule in CHECKS.items():
        if name in values:
            rule(name, values[name], cfg, meta)
    _check_rule_options(cfg)
    cfg.check(meta)
    return meta, arch, device
