"""scikit-learn's bundled 8x8 handwritten digits: real images, no download."""
from __future__ import annotations

import torch


def digits(seed=0, test_fraction=0.25):
    """1797 digits as (1, 8, 8) images scaled to [0, 1] then standardised with the
    training mean and standard deviation; stratified train/test split by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, te = train_test_split(range(len(y)), test_size=test_fraction, stratify=bunch.target,
                              random_state=seed)
    tr, te = torch.tensor(tr), torch.tensor(te)
    mean, std = x[tr].mean(), x[tr].std()
    return (x[tr] - mean) / std, y[tr], (x[te] - mean) / std, y[te]
