"""The stability study of stability.py: the phase plane of the four schemes, then every
architecture at every depth probed (perturbation growth, singular values, step-map
spectra) before and after training."""
from __future__ import annotations

import torch

from harness import board, figures
from harness.cli import depths_of
from harness.experiment import build, open_run
from harness.fit_experiments import lowest, train
from harness.rundir import emit_result
from models import MODELS
from models import stability as st
from models.training import mean_loss


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


def stability_main(cfg):
    """Validate -> load -> for every architecture and depth: build, probe, train, probe ->
    report (four figures; RESULT's train_acc and test_acc are the lowest over the
    architectures and depths, train_time_s the sum)."""
    o = open_run(cfg)  # dense networks (CONV is no constant of the study); every architecture below
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
