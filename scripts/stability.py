"""Stability diagnostics of the four architectures (Haber & Ruthotto 2017), as figures.

phase_plane.png: 2-D points through PHASE_LAYERS identical layers (forward Euler, Verlet,
leapfrog) for K with eigenvalues (2, 2), (-2, -2) and the antisymmetric K (eigenvalues +-i).
perturbation_growth.png: ||Y_j(x + delta) - Y_j(x)|| / ||delta|| and the largest singular
value of dY_j/dY_0 through the layers, at initialisation and after training, for each depth
N with h = FINAL_TIME / N.  spectra.png: eigenvalues of every layer's step-map Jacobian at
the data, with the unit circle.  depth.png: accuracy, training loss and time against N.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness import board, figures  # noqa: E402
from harness.cli import configure, depths_of  # noqa: E402
from harness.entry import run  # noqa: E402
from harness.experiment import build, open_run  # noqa: E402
from harness.fit_experiments import lowest, train  # noqa: E402
from harness.rundir import emit_result  # noqa: E402
from models import MODELS  # noqa: E402
from models import stability as st  # noqa: E402
from models.training import mean_loss  # noqa: E402

DATASET = "DIGITS"  # ELLIPSE, SWISS, DIGITS, MNIST, FASHION or CIFAR10 (dense networks)
DEPTHS = "4,8,16,32,64"  # depths N of the sweep, comma-separated; h = FINAL_TIME / N
FINAL_TIME = 4.0  # T = N h, the same for every depth
EPOCHS = 8  # training epochs at every depth
LEARN_RATE = 3e-3  # learning rate
OPTIMIZER = "adam"  # adam or sgd
LR_STEP = 0  # halve the learning rate every LR_STEP epochs (0: constant)
BATCH_SIZE = 64  # mini-batch size
GAMMA = 0.01  # diffusion gamma of the antisymmetric network
ACTIVATION = "tanh"  # tanh, relu or identity (a linear network)
WIDTH = 0  # dense state width, at least the input's features: smaller inputs are zero-padded to it
SAMPLES = 32  # test samples on which growth and singular values are measured
POWER_ITERATIONS = 20  # power-iteration steps for the largest singular value of dY_j/dY_0
SINGULAR_POINTS = 5  # layers j (evenly spaced in 0..N) at which that singular value is computed
SPECTRA_DEPTH = 16  # the depth whose step-map eigenvalues spectra.png shows (one of DEPTHS)
SPECTRA_SAMPLES = 8  # test samples at which the step-map Jacobians are taken
PHASE_STEP = 0.1  # h of the phase-plane figure
PHASE_LAYERS = 10  # identical layers of the phase-plane figure
PHASE_GRID = 7  # phase plane: a PHASE_GRID x PHASE_GRID grid of starting points in [-1, 1]^2
SEED = 0  # random seed (data split, initialisation, perturbations)
DEVICE = "auto"  # auto (cuda if present), cpu, cuda, cuda:1, ...
DATA_ROOT = "data"  # where datasets are read, downloaded and cached
RESULTS_DIR = "results"  # run directories go under RESULTS_DIR/<script>/


def _probe(model, x, cfg):
    """Growth through the layers and the largest singular value of dY_j/dY_0 at x."""
    n = model.n_layers
    layers = sorted({round(k * n / (cfg.SINGULAR_POINTS - 1)) for k in range(cfg.SINGULAR_POINTS)})
    gen = torch.Generator().manual_seed(cfg.SEED)  # the same perturbations before and after training
    growth = st.perturbation_growth(model, x, generator=gen).cpu()
    sigma = st.top_singular_values(model, x, layers, cfg.POWER_ITERATIONS, generator=gen).cpu()
    return {"growth": growth, "layers": layers, "sigma": sigma}


def phase_plane(cfg):
    points = st.grid_points(cfg.PHASE_GRID)
    runs = {label: st.phase_plane(K, points, cfg.PHASE_STEP, cfg.PHASE_LAYERS, activation=cfg.ACTIVATION)
            for label, K in st.PHASE_KS.items()}
    bound = (1 + cfg.PHASE_STEP ** 2) ** (cfg.PHASE_LAYERS / 2)
    print(f"phase plane: mean pairwise distance of Y_N over Y_0, {cfg.PHASE_LAYERS} layers of h={cfg.PHASE_STEP} "
          f"(forward Euler on the antisymmetric K is bounded by (1 + h^2)^(N/2) = {bound:.4f})")
    print(f"  {'K':<24}" + "".join(f"{s:>10}" for s in st.PHASE_SCHEMES))
    for label, schemes in runs.items():
        print(f"  {label:<24}" + "".join(f"{schemes[s]['growth']:>10.4f}" for s in st.PHASE_SCHEMES))
    return runs


def run_stability(script_file, cfg):
    """Validate -> load -> for every architecture and depth: build, probe, train, probe ->
    report (four figures; RESULT's train_acc and test_acc are the lowest over the
    architectures and depths, train_time_s the sum)."""
    o = open_run(script_file, cfg.replace(CONV=False))  # dense networks; every architecture below
    cfg, meta, device, data, rundir = o.cfg, o.meta, o.device, o.data, o.run
    depths = depths_of(cfg)
    print(f"stability of the four architectures on {meta.name} (dense), depths {depths}, h = {cfg.FINAL_TIME}/N, "
          f"{cfg.EPOCHS} epochs each, on {device}; results in {rundir.path}")
    phase = phase_plane(cfg)
    x_probe, x_spec = data.x_test[:cfg.SAMPLES], data.x_test[:cfg.SPECTRA_SAMPLES]
    probes, spectra, histories, results, trainings = {}, {}, {}, {}, {}
    print(f"\n{'architecture':<14} {'N':>4} {'h':>7} {'test acc':>8} {'train loss':>10} {'time (s)':>8} "
          f"{'growth init':>11} {'trained':>8} {'sigma init':>10} {'trained':>8}")
    for arch in MODELS:
        r = {key: {} for key in ("growth_init", "growth_trained", "sigma_init", "sigma_trained",
                                 "accuracy_by_depth", "loss_by_depth", "time_by_depth")}
        probes[arch], histories[arch] = {}, {}
        for n in depths:
            model = build(cfg, arch, meta, device, n, cfg.FINAL_TIME / n)
            before = _probe(model, x_probe, cfg)
            if n == cfg.SPECTRA_DEPTH:
                eig_init = st.step_eigenvalues(model, x_spec).cpu()
            history, res = train(cfg, model, data, None)
            trainings[f"{arch} N={n}"] = res
            after = _probe(model, x_probe, cfg)
            if n == cfg.SPECTRA_DEPTH:
                spectra[arch] = {"init": eig_init, "trained": st.step_eigenvalues(model, x_spec).cpu()}
            probes[arch][n], histories[arch][n] = {"init": before, "trained": after}, history
            board.write_history(rundir.path / f"{arch}-N{n}", history)
            key = str(n)
            r["growth_init"][key] = before["growth"][-1].mean().item()
            r["growth_trained"][key] = after["growth"][-1].mean().item()
            r["sigma_init"][key] = before["sigma"][-1].mean().item()
            r["sigma_trained"][key] = after["sigma"][-1].mean().item()
            r["accuracy_by_depth"][key] = res["test_acc"]
            r["loss_by_depth"][key] = mean_loss(model, data.x_train, data.y_train)
            r["time_by_depth"][key] = res["train_time_s"]
            print(f"{arch:<14} {n:>4} {cfg.FINAL_TIME / n:>7.4f} {res['test_acc']:>8.4f} "
                  f"{r['loss_by_depth'][key]:>10.4f} {res['train_time_s']:>8.1f} "
                  + "".join(f"{r[k][key]:>{w}.3f}" for k, w in (("growth_init", 12), ("growth_trained", 9),
                                                                 ("sigma_init", 11), ("sigma_trained", 9))))
        r["max_abs_step_eigenvalue"] = spectra[arch]["trained"].abs().max().item()
        r["max_abs_step_eigenvalue_init"] = spectra[arch]["init"].abs().max().item()
        results[arch] = r
    print(f"\nlargest |eigenvalue| of a step map's Jacobian (N={cfg.SPECTRA_DEPTH}, at {cfg.SPECTRA_SAMPLES} test "
          "samples), at initialisation / trained:")
    for arch, r in results.items():
        print(f"  {arch:<14} {r['max_abs_step_eigenvalue_init']:.4f} / {r['max_abs_step_eigenvalue']:.4f}")
    phase_growth = {label: {s: v["growth"] for s, v in runs.items()} for label, runs in phase.items()}
    rundir.save_json("metrics.json", {"results": results, "phase_plane": phase_growth, "depths": depths,
                                   "final_time": cfg.FINAL_TIME,
                                   "history": {a: {str(n): h for n, h in hs.items()} for a, hs in histories.items()}})
    figures.phase_plane_figure(rundir.file("phase_plane.png"), phase, cfg.PHASE_STEP)
    figures.growth_figure(rundir.file("perturbation_growth.png"), probes, cfg.FINAL_TIME)
    figures.spectra_figure(rundir.file("spectra.png"), spectra, cfg.SPECTRA_DEPTH)
    figures.depth_figure(rundir.file("depth.png"), results, histories)
    print(f"figures: phase_plane.png, perturbation_growth.png, spectra.png, depth.png in {rundir.path}")
    emit_result({"dataset": meta.name, **lowest(trainings), "depths": depths, "final_time": cfg.FINAL_TIME,
                 "results": results, "phase_plane": phase_growth, "run_dir": str(rundir.path)})


def main(argv=None):
    run_stability(__file__, configure(__file__, globals(), argv, __doc__))


if __name__ == "__main__":
    run(main)
