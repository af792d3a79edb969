"""The experiments of the single-architecture and toy scripts:
validate -> load -> build -> train -> report."""
from __future__ import annotations

from harness import board, figures
from harness.experiment import augmenting, build, describe, open_run
from harness.resume import Checkpointer, PhaseStates
from harness.rundir import emit_result
from models import MODELS
from models.training import evaluate, fit


def train(cfg, model, data, log, resume=None, on_epoch_end=None):
    """Fit ``model`` with the constants (continuing ``resume``, a state that ``on_epoch_end``
    received); returns (history, train/test accuracy and training time)."""
    history = fit(model, data.x_train, data.y_train, epochs=cfg.EPOCHS, lr=cfg.LEARN_RATE,
                  batch_size=cfg.BATCH_SIZE, optimizer=cfg.OPTIMIZER, schedule=cfg.LR_SCHEDULE,
                  alpha_f=cfg.ALPHA_F if cfg.REG_F else 0.0, alpha_c=cfg.ALPHA_C if cfg.REG_C else 0.0,
                  seed=cfg.SEED, log=log,
                  resume=resume, on_epoch_end=on_epoch_end, augment=augmenting(cfg, data.info),
                  test=(data.x_test, data.y_test))
    result = {"train_acc": evaluate(model, data.x_train, data.y_train),
              "test_acc": evaluate(model, data.x_test, data.y_test), "train_time_s": sum(history["seconds"])}
    return history, result


def train_single(cfg):
    """Train one architecture (cfg.CHOICE) on cfg.DATASET; save metrics, curves, weights."""
    o = open_run(cfg)
    cfg, run = o.cfg, o.run
    print(f"{o.arch} ({'conv' if cfg.CONV else 'dense'}), N={cfg.N}, h={cfg.STEP} on {o.meta.name} "
          f"({len(o.data.y_train)} train / {len(o.data.y_test)} test) on {o.device}; results in {run.path}")
    model = build(cfg, o.arch, o.meta, o.device)
    describe(model)
    saver = Checkpointer(run.path, cfg, cfg.EPOCHS)
    history, result = train(cfg, model, o.data, print, resume=o.state, on_epoch_end=saver)
    result["checkpoint_s"] = saver.seconds
    run.save_json("metrics.json", {"history": history, **result})
    run.save_weights("model.pt", model.state_dict())
    board.write_history(run.path, history)
    figures.curves(run.file("training.png"), {o.arch: history}, title=f"{o.arch} on {o.meta.name}")
    print(f"train acc {result['train_acc']:.4f}  test acc {result['test_acc']:.4f}  "
          f"time {result['train_time_s']:.1f}s")
    emit_result({"architecture": o.arch, "dataset": o.meta.name, **result, "run_dir": str(run.path)})


def train_toy(cfg):
    """Train all four architectures on a toy set; table, figure and one RESULT (whose
    train_acc and test_acc are the lowest of the four, train_time_s their sum)."""
    o = open_run(cfg)  # CHOICE is not the toy scripts' constant: every architecture is trained below
    cfg, run, data = o.cfg, o.run, o.data
    phases = PhaseStates(o.state)  # each architecture's latest training state
    print(f"{o.meta.name}: {len(data.y_train)} train / {len(data.y_test)} validation points, "
          f"N={cfg.N}, h={cfg.STEP}, {cfg.EPOCHS} epochs on {o.device}; results in {run.path}")
    models, histories, results = {}, {}, {}
    for arch in MODELS:
        model = build(cfg, arch, o.meta, o.device)
        saver = Checkpointer(run.path, cfg, cfg.EPOCHS, wrap=phases.wrap(arch))
        history, result = train(cfg, model, data, print if cfg.VERBOSE else None, phases.get(arch), saver)
        models[arch], histories[arch], results[arch] = model, history, result
        print(f"  {arch:<14} val acc {result['test_acc']:.4f}  ({result['train_time_s']:.1f}s)")
    print(f"\n{'architecture':<14} {'train acc':>9} {'val acc':>8} {'time (s)':>9}")
    for arch, r in results.items():
        print(f"{arch:<14} {r['train_acc']:>9.4f} {r['test_acc']:>8.4f} {r['train_time_s']:>9.1f}")
    run.save_json("metrics.json", {"history": histories, "results": results})
    for arch, history in histories.items():
        board.write_history(run.path / arch, history)
    figures.toy_figure(run.file(f"{o.meta.name.lower()}.png"), models, data)
    figures.curves(run.file("training.png"), histories, title=o.meta.name)
    emit_result({"dataset": o.meta.name, **lowest(results), "results": results, "run_dir": str(run.path)})


def lowest(results):
    """The RESULT keys of a script that trains several networks: the lowest accuracies, the
    total training time."""
    return {"train_acc": min(r["train_acc"] for r in results.values()),
            "test_acc": min(r["test_acc"] for r in results.values()),
            "train_time_s": sum(r["train_time_s"] for r in results.values())}
