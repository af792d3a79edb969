"""Figures of the experiment scripts (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from datasets.files import atomic


class _OnFirstUse:
    """A matplotlib module imported on its first attribute, on the Agg backend: a process
    that draws nothing (a worker the scripts spawn, which imports this module with their
    own) does not pay matplotlib's import, about half a second."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        import matplotlib

        matplotlib.use("Agg")
        return getattr(importlib.import_module(self._name), attr)


plt, patches, ticker = (_OnFirstUse(f"matplotlib.{m}") for m in ("pyplot", "patches", "ticker"))

CLASS_COLOURS = ("tab:blue", "tab:orange")


def _save(fig, path):
    """Write the figure atomically (a temporary file, then a rename), in the format of
    ``path``'s suffix."""
    fig.tight_layout()
    try:
        with atomic(path) as tmp:
            fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def curves(path, series, *, x_key="epoch", title=""):
    """One panel per metric: series is {label: {x_key: [...], metric: [...]}}."""
    metrics = sorted({k for s in series.values() for k in s if k != x_key and isinstance(s[k], list)})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, s in series.items():
            if metric in s and len(s[metric]) == len(s[x_key]):
                ax.plot(s[x_key], s[metric], label=label)
        ax.set_xlabel(x_key)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, path)


@torch.no_grad()
def toy_figure(path, models, data, *, n_traj=12, resolution=200):
    """Data, each model's decision regions, and a few points' trajectories through the layers."""
    x_all = torch.cat([data.x_train, data.x_test]).cpu()
    y_all = torch.cat([data.y_train, data.y_test]).cpu()
    lo, hi = x_all[:, :2].min(0).values - 0.3, x_all[:, :2].max(0).values + 0.3
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], resolution),
                            torch.linspace(lo[1], hi[1], resolution), indexing="xy")
    grid = torch.zeros(resolution * resolution, x_all.shape[1])
    grid[:, 0], grid[:, 1] = gx.reshape(-1), gy.reshape(-1)
    def spread(idx, k):  # k indices evenly spaced through one class
        return idx[torch.linspace(0, len(idx) - 1, k).long()]

    pick = torch.cat([spread(torch.nonzero(y_all == c).flatten(), n_traj // 2) for c in (0, 1)])
    n = len(models)
    fig, axes = plt.subplots(2, n + 1, figsize=(3.3 * (n + 1), 6.4), squeeze=False)
    for c in (0, 1):
        sel = y_all == c
        axes[0][0].scatter(x_all[sel, 0], x_all[sel, 1], s=3, c=CLASS_COLOURS[c], label=f"class {c}")
    axes[0][0].set_title("data")
    axes[0][0].legend(fontsize=7, markerscale=3)
    axes[1][0].axis("off")
    for k, (name, model) in enumerate(models.items(), start=1):
        device = next(model.parameters()).device
        model.eval()
        prob = torch.softmax(model(grid.to(device)), 1)[:, 1].cpu().reshape(resolution, resolution)
        ax = axes[0][k]
        ax.contourf(gx, gy, prob, levels=[0, 0.5, 1], colors=["#c6dbef", "#fdd0a2"])
        for c in (0, 1):
            sel = data.y_test.cpu() == c
            ax.scatter(data.x_test.cpu()[sel, 0], data.x_test.cpu()[sel, 1], s=3, c=CLASS_COLOURS[c])
        ax.set_title(f"{name}: decision regions")
        traj = model.trajectory(x_all[pick].to(device)).cpu()  # (N + 1, B, W)
        ax = axes[1][k]
        for i, idx in enumerate(pick):
            ax.plot(traj[:, i, 0], traj[:, i, 1], "-", lw=0.8, c=CLASS_COLOURS[int(y_all[idx])])
            ax.plot(traj[-1, i, 0], traj[-1, i, 1], "o", ms=3, c=CLASS_COLOURS[int(y_all[idx])])
        ax.set_title(f"{name}: Y_j, coordinates 1-2")
    _save(fig, path)


# ---- stability diagnostics (scripts/stability.py) ----------------------------------------

SCHEME_LABELS = {"resnet": "forward Euler", "verlet": "Verlet", "leapfrog": "leapfrog"}


def phase_plane_figure(path, phase, h):
    """Rows: schemes; columns: K. Each starting point's path, start (grey) and end (coloured)."""
    labels = list(phase)
    schemes = list(next(iter(phase.values())))
    fig, axes = plt.subplots(len(schemes), len(labels), figsize=(3.6 * len(labels), 3.4 * len(schemes)),
                             squeeze=False)
    for c, label in enumerate(labels):
        for r, scheme in enumerate(schemes):
            run, ax = phase[label][scheme], axes[r][c]
            traj = run["trajectory"]  # (N + 1, B, 2)
            colours = plt.cm.viridis(torch.linspace(0, 1, traj.shape[1]).numpy())
            for i in range(traj.shape[1]):
                ax.plot(traj[:, i, 0], traj[:, i, 1], "-", lw=0.7, c=colours[i])
            ax.scatter(traj[0, :, 0], traj[0, :, 1], s=6, c="0.6", zorder=3)
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=9, c=colours, zorder=4)
            ax.set_title(f"{SCHEME_LABELS.get(scheme, scheme)}, K {label}\ndistance x{run['growth']:.3f}", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(alpha=0.3)
    n_layers = next(iter(phase.values()))[schemes[0]]["trajectory"].shape[0] - 1
    fig.suptitle(f"{n_layers} identical layers, h = {h}: grey start, coloured end")
    _save(fig, path)


def _log_axis(ax):
    """A logarithmic y axis with plain numbers (0.5, 2) as tick labels."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")


def _depth_colours(depths):
    return dict(zip(depths, plt.cm.plasma(torch.linspace(0, 0.85, len(depths)).numpy())))


def growth_figure(path, probes, final_time):
    """Row 1: ||dY_j|| / ||dY_0|| (median, quartiles) against t = j h; row 2: the largest singular
    value of dY_j/dY_0 (mean over samples); dashed at initialisation, solid trained."""
    archs = list(probes)
    fig, axes = plt.subplots(2, len(archs), figsize=(4.2 * len(archs), 7.0), squeeze=False, sharex=True)
    for c, arch in enumerate(archs):
        colours = _depth_colours(list(probes[arch]))
        for n, pair in probes[arch].items():
            for when, style in (("init", "--"), ("trained", "-")):
                p = pair[when]
                t = torch.arange(n + 1) * final_time / n
                q = torch.quantile(p["growth"], torch.tensor([0.25, 0.5, 0.75], dtype=p["growth"].dtype), dim=1)
                label = f"N={n}" if when == "trained" else None
                axes[0][c].plot(t, q[1], style, c=colours[n], lw=1, label=label)
                if when == "trained":
                    axes[0][c].fill_between(t, q[0], q[2], color=colours[n], alpha=0.15, lw=0)
                tl = torch.tensor(p["layers"]) * final_time / n
                axes[1][c].plot(tl, p["sigma"].mean(1), style, marker=".", c=colours[n], lw=1, label=label)
        axes[0][c].set_title(f"{arch}: ||dY_j|| / ||dY_0||", fontsize=10)
        axes[1][c].set_title(f"{arch}: largest singular value of dY_j/dY_0", fontsize=10)
        for ax in axes[:, c]:
            _log_axis(ax)
        axes[1][c].set_xlabel("t = j h")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("perturbation growth through the layers: dashed at initialisation, solid after training")
    _save(fig, path)


def spectra_figure(path, spectra, depth):
    """Eigenvalues of every layer's step-map Jacobian at the data, with the unit circle."""
    archs = list(spectra)
    fig, axes = plt.subplots(1, len(archs), figsize=(4.0 * len(archs), 4.0), squeeze=False)
    circle = torch.linspace(0, 2 * torch.pi, 400)
    for ax, arch in zip(axes[0], archs):
        for when, colour, size in (("init", "0.65", 3), ("trained", "tab:red", 4)):
            ev = spectra[arch][when].flatten()
            ax.scatter(ev.real, ev.imag, s=size, c=colour, alpha=0.5, lw=0,
                       label=f"{when}: max |lambda| {ev.abs().max():.4f}")
        ax.plot(torch.cos(circle), torch.sin(circle), "k-", lw=0.8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{arch}, N={depth}", fontsize=10)
        ax.set_xlabel("Re")
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Im")
    fig.suptitle("eigenvalues of each layer's step-map Jacobian at the data, and the unit circle")
    _save(fig, path)


def depth_figure(path, results, histories):
    """Top: test accuracy, final training loss, training time and end-to-end growth against N;
    bottom: each architecture's loss curves, one per depth."""
    archs = list(results)
    fig, axes = plt.subplots(2, max(4, len(archs)), figsize=(4.2 * max(4, len(archs)), 7.2), squeeze=False)
    top = (("accuracy_by_depth", "test accuracy"), ("loss_by_depth", "final training loss"),
           ("time_by_depth", "training time (s)"), ("growth_trained", "||dY_N|| / ||dY_0||, trained (init dashed)"))
    for ax, (key, title) in zip(axes[0], top):
        for k, arch in enumerate(archs):
            depths = [int(n) for n in results[arch][key]]
            line, = ax.plot(depths, list(results[arch][key].values()), "o-", ms=3, label=arch)
            if key == "growth_trained":
                ax.plot(depths, list(results[arch]["growth_init"].values()), "--", c=line.get_color(), lw=0.8)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3, which="both")
        if key in ("loss_by_depth", "growth_trained"):
            _log_axis(ax)
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.set_xlabel("layers N (h = T / N)")
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=8)
    for ax, arch in zip(axes[1], archs):
        colours = _depth_colours(list(histories[arch]))
        for n, hist in histories[arch].items():
            ax.plot(hist["epoch"], hist["loss"], c=colours[n], label=f"N={n}")
        _log_axis(ax)
        ax.set_title(f"{arch}: training loss", fontsize=10)
        ax.set_xlabel("epoch")
    axes[1][0].legend(fontsize=7)
    _save(fig, path)


TIMELINE_COLOURS = {"forward": "tab:blue", "backward": "tab:orange", "step": "tab:purple",
                    "send": "tab:grey", "wait input": "tab:red", "wait gradient": "gold"}
RULE_COLOURS = ("tab:green", "tab:cyan", "tab:olive", "tab:pink", "tab:brown")  # the rules' own kinds, in order


def timeline_figure(path, profiles, title=""):
    """A Gantt chart of the first batches of each stage: one row per stage, one bar per
    piece of work (forward, backward, module, optimiser step, communication, waits)."""
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.75 * len(profiles)))
    colours = dict(TIMELINE_COLOURS)
    for kind in dict.fromkeys(k for p in profiles for k, *_ in p["timeline"] if k not in TIMELINE_COLOURS):
        colours[kind] = RULE_COLOURS[(len(colours) - len(TIMELINE_COLOURS)) % len(RULE_COLOURS)]
    end = 0.0
    for i, p in enumerate(profiles):
        for kind, _, t0, t1 in p["timeline"]:
            ax.broken_barh([(1e3 * t0, 1e3 * (t1 - t0))], (i - 0.38, 0.76), color=colours[kind])
            end = max(end, 1e3 * t1)
    ax.set_yticks(range(len(profiles)), [f"stage {i}" for i in range(len(profiles))])
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.01 if end else 1)
    ax.set_xlabel("ms since the stages started")
    handles = [patches.Patch(color=c, label=k) for k, c in colours.items()]
    ax.legend(handles=handles, ncol=len(handles), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_title(title or "the first batches of each stage")
    _save(fig, path)


def race_figure(path, curves, targets, *, title=""):
    """Test accuracy against training seconds and against epochs, one colour per trainer
    ({trainer: [curve per seed]}, a curve a list of {seconds, epoch, test_acc}; the line
    style tells the family: backprop, torch peer, pipeline, multilevel, PVD): the first
    seed drawn full, the others faint; the target dotted.  The accuracy axis spans the
    last stretch of the race (from 6 points below the lowest final accuracy)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    styles = {"bp": "-", "ddp": "--", "gpipe": "--", "1f1b": "--", "pipeline": "-", "multilevel": "-.", "pvd": ":"}
    finals = [c[-1]["test_acc"] for runs in curves.values() for c in runs]
    for ax, x_key, label in zip(axes, ("seconds", "epoch"), ("training time (s)", "epochs")):
        for k, (trainer, runs) in enumerate(curves.items()):
            style = styles.get(trainer.split("-")[0], "-")
            for s, curve in enumerate(runs):
                ax.plot([p[x_key] for p in curve], [p["test_acc"] for p in curve], color=cmap(k % cmap.N), ls=style,
                        marker="o" if s == 0 else None, ms=2.5, lw=1.5 if s == 0 else 0.8, alpha=1 if s == 0 else 0.35,
                        label=trainer if s == 0 else None)
        for t in sorted(set(targets)):
            ax.axhline(t, color="black", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    if finals:
        axes[0].set_ylim(min(finals) - 0.06, max(finals + list(targets)) + 0.01)
    axes[1].legend(fontsize=8, loc="lower right", ncol=2)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def forecast_race_figure(path, curves, table, target, *, title=""):
    """One panel per device count M: each trainer's test accuracy after each epoch
    (measured) against the forecast seconds of that many epochs on M devices
    ({trainer: {M: [accuracy per epoch]}}, table {trainer: {M: {"epoch_s"}}})."""
    devices = sorted(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices), 4.2), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes[0], devices):
        for k, (trainer, by_m) in enumerate(curves.items()):
            acc, epoch_s = by_m[m], table[trainer][m]["epoch_s"]
            ax.plot([epoch_s * e for e in range(1, len(acc) + 1)], acc, marker="o", ms=3, color=cmap(k % 10),
                    label=trainer)
        ax.axhline(target, color="black", ls=":", lw=1)
        ax.set_title(f"M = {m} devices")
        ax.set_xlabel("forecast training time (s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (measured per epoch)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(f"forecast race: {title}")
    _save(fig, path)
