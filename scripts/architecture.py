"""The experiments of the single-architecture and toy scripts, shared by their constants."""
from __future__ import annotations

import torch

from models import MODELS, build_model
from models.training import evaluate, fit
from scripts import common, plotting


def build(cfg, arch, meta, device, n_layers=None, h=None):
    """The network of the constants (cfg.N layers of step cfg.STEP unless given), seeded by cfg.SEED."""
    torch.manual_seed(cfg.SEED)
    return build_model(arch, meta.shape, meta.classes, n_layers or cfg.N, h or cfg.STEP,
                       **common.model_kwargs(cfg, meta)).to(device)


def train(cfg, model, data, log, resume=None, on_epoch_end=None):
    """Fit ``model`` with the constants (continuing ``resume``, a state that ``on_epoch_end``
    received); returns (history, train/test accuracy and training time)."""
    history = fit(model, data.x_train, data.y_train, epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE,
                  batch_size=cfg.BATCH_SIZE, optimizer=cfg.OPTIMIZER, lr_step=cfg.LR_STEP,
                  alpha_f=cfg.ALPHA_F if getattr(cfg, "REG_F", False) else 0.0,
                  alpha_c=cfg.ALPHA_C if getattr(cfg, "REG_C", False) else 0.0, seed=cfg.SEED, log=log,
                  resume=resume, on_epoch_end=on_epoch_end, augment=common.augmenting(cfg, data.info))
    result = {"train_acc": evaluate(model, data.x_train, data.y_train),
              "test_acc": evaluate(model, data.x_test, data.y_test), "train_time_s": sum(history["seconds"])}
    return history, result


def _open(script_file, cfg, toy=False):
    """Resolve the constants (a resumed run's own), load the data, open the run directory
    and its latest checkpoint (None for a new run)."""
    cfg, resume_path = common.resume_constants(script_file, cfg)
    meta, arch, device = common.resolve(cfg)
    common.check(not toy or not meta.image, f"this script trains on the toy sets ELLIPSE or SWISS, got {meta.name}")
    data = common.load_data(cfg, device)
    extra = {"device": str(device)} if toy else {"device": str(device), "architecture": arch}
    run = common.RunDir(script_file, cfg, extra=extra, path=resume_path)
    state = common.load_checkpoint(run.path) if resume_path else None
    return cfg, meta, arch, device, data, run, state


def train_single(script_file, cfg):
    """Train one architecture (cfg.CHOICE) on cfg.DATASET; save metrics, curves, weights."""
    cfg, meta, arch, device, data, run, state = _open(script_file, cfg)
    print(f"{arch} ({'conv' if cfg.CONV else 'dense'}), N={cfg.N}, h={cfg.STEP} on {meta.name} "
          f"({len(data.y_train)} train / {len(data.y_test)} test) on {device}; results in {run.path}")
    model = build(cfg, arch, meta, device)
    common.describe(model)
    saver = common.Checkpointer(run.path, cfg, cfg.EPOCHS)
    history, result = train(cfg, model, data, print, resume=state, on_epoch_end=saver)
    result["checkpoint_s"] = saver.seconds
    run.save_json("metrics.json", {"history": history, **result})
    torch.save(model.state_dict(), run.file("model.pt"))
    plotting.curves(run.file("training.png"), {arch: history}, title=f"{arch} on {meta.name}")
    print(f"train acc {result['train_acc']:.4f}  test acc {result['test_acc']:.4f}  "
          f"time {result['train_time_s']:.1f}s")
    common.emit_result({"architecture": arch, "dataset": meta.name, **result, "run_dir": str(run.path)})


def train_toy(script_file, cfg):
    """Train all four architectures on a toy set; table, figure and one RESULT."""
    cfg = cfg.replace(CHOICE="resnet")  # validated once; every architecture is trained below
    cfg, meta, _, device, data, run, state = _open(script_file, cfg, toy=True)
    phases = common.PhaseStates(state)  # each architecture's latest training state
    print(f"{meta.name}: {len(data.y_train)} train / {len(data.y_test)} validation points, "
          f"N={cfg.N}, h={cfg.STEP}, {cfg.EPOCHS} epochs on {device}; results in {run.path}")
    models, histories, results = {}, {}, {}
    for arch in MODELS:
        model = build(cfg, arch, meta, device)
        saver = common.Checkpointer(run.path, cfg, cfg.EPOCHS, wrap=phases.wrap(arch))
        history, result = train(cfg, model, data, print if cfg.VERBOSE else None, phases.get(arch), saver)
        models[arch], histories[arch], results[arch] = model, history, result
        print(f"  {arch:<14} val acc {result['test_acc']:.4f}  ({result['train_time_s']:.1f}s)")
    print(f"\n{'architecture':<14} {'train acc':>9} {'val acc':>8} {'time (s)':>9}")
    for arch, r in results.items():
        print(f"{arch:<14} {r['train_acc']:>9.4f} {r['test_acc']:>8.4f} {r['train_time_s']:>9.1f}")
    run.save_json("metrics.json", {"history": histories, "results": results})
    plotting.toy_figure(run.file(f"{meta.name.lower()}.png"), models, data)
    plotting.curves(run.file("training.png"), histories, title=meta.name)
    common.emit_result({"dataset": meta.name, "results": results, "run_dir": str(run.path)})
