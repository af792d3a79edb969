"""Figures of the experiment scripts (matplotlib, Agg backend, PNG)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

CLASS_COLOURS = ("tab:blue", "tab:orange")


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
