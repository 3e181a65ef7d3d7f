"""dgmrun's RBM against scikit-learn's BernoulliRBM: same data, same update rule, same budget.

Data: mnist-small (8000 train / 2000 test real digits) thresholded at 0.5, float32, in file order.
Both: 256 hidden units, batch 64, learning rate 0.05, persistent CD with one Gibbs step, 10 epochs,
weights N(0, 0.01), zero biases, one thread each (BLAS for numpy, intra-op threads for torch).

The update rules are identical. scikit-learn's ``_fit`` adds lr / batch * (sum_batch v h(v) - sum_chains
v~ h(v~)) with one persistent chain per batch row (``h_samples_`` has batch_size rows), i.e. the
*mean* gradient times lr. dgmrun sets the gradient of mean_batch F(v) - mean_chains F(v~) in closed form
and steps plain SGD at lr: lr * (mean v h(v) - mean v~ h(v~)), the same with num_chains = batch size = 64 (8000 / 64
= 125 equal batches, so no ragged last batch). The persistent state: scikit-learn keeps the chains'
hidden samples h and draws v~ | h; dgmrun keeps v~ and draws h | v~ then v~ | h: the same Markov chain.
Neither shuffles (scikit-learn walks the data in order; the DataLoader here does too).

Pseudo-log-likelihood, the same function for both models' parameters: scikit-learn's ``score_samples``
rule (flip one random pixel per example, D log sigmoid(F(v_flipped) - F(v))), mean over the test set,
averaged over 5 calls with different random pixels. Also the test NLL of both, bracketed: forward AIS
with dgmrun's default eval settings (``eval.ais_chains`` x ``eval.ais_betas``, ``eval.ais_runs`` runs;
base rates from the training data), optimistic, and RAISE on the first ``eval.raise_examples`` test
digits (their mean log Z, with the mean free energy of all test digits), conservative.

Run: python scripts/bench_rbm_sklearn.py [--root ../shared/data/mnist-small] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dgmrun.schema import EvalConfig

ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-small"




def load_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import gzip

    def images(name: str) -> torch.Tensor:
        with gzip.open(root / name) as f:
            data = f.read()
        n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).view(n, rows * cols).float() / 255

    train, test = images("train-images-idx3-ubyte.gz"), images("t10k-images-idx3-ubyte.gz")
    return (train > 0.5).float(), (test > 0.5).float()


def free_energy(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return -(v @ b) - F.softplus(v @ W + c).sum(-1)


def pseudo_log_likelihood(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, calls: int = 5) -> float:
    """scikit-learn's score_samples rule, mean over examples, averaged over ``calls`` random flips."""
    values = []
    for seed in range(calls):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, v.shape[1], (len(v),), generator=g)
        flipped = v.clone()
        rows = torch.arange(len(v))
        flipped[rows, idx] = 1 - flipped[rows, idx]
        values.append((v.shape[1] * F.logsigmoid(free_energy(flipped, W, b, c) - free_energy(v, W, b, c))).mean().item())
    return float(np.mean(values))


def ais_nll(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, train: torch.Tensor
            ) -> tuple[float, float, float]:
    """(AIS test NLL, its spread over the independent runs, RAISE NLL of the first examples), as dgmrun's RBM
    computes them with the default eval settings."""
    from dgmrun.metrics.likelihood import ais_log_partition, raise_log_likelihood

    s = EvalConfig()
    mean = train.mean(0).clamp(1e-3, 1 - 1e-3)
    base = torch.log(mean) - torch.log1p(-mean)
    log_z, runs = ais_log_partition(W, b, c, base, s.ais_chains, s.ais_betas, torch.Generator().manual_seed(1234),
                                    num_runs=s.ais_runs)
    free = free_energy(v, W, b, c)
    subset = v[:s.raise_examples]  # RAISE's log Z from these, as dgmrun's test/nll_raise
    log_p = raise_log_likelihood(W, b, c, subset, base, 1, s.ais_betas, torch.Generator().manual_seed(1234))
    raise_nll = (free.mean() + (-free[:len(subset)] - log_p).mean()).item()
    spread = runs.std().item() if len(runs) > 1 else float("nan")
    return (free + log_z).mean().item(), spread, raise_nll


def run_sklearn(train: torch.Tensor, epochs: int, seed: int) -> tuple[float, tuple[torch.Tensor, ...], float]:
    from sklearn.neural_network import BernoulliRBM
    from threadpoolctl import threadpool_limits

    rbm = BernoulliRBM(n_components=256, learning_rate=0.05, batch_size=64, n_iter=epochs, random_state=seed)
    x = train.numpy().astype(np.float32)
    with threadpool_limits(1):
        start = time.perf_counter()
        rbm.fit(x)
        seconds = (time.perf_counter() - start) / epochs
    params = (torch.from_numpy(rbm.components_.T.copy()).float(), torch.from_numpy(rbm.intercept_visible_).float(),
              torch.from_numpy(rbm.intercept_hidden_).float())
    return seconds, params, rbm


def run_dgmrun(train: torch.Tensor, epochs: int, seed: int) -> tuple[float, tuple[torch.Tensor, ...], object]:
    import lightning.pytorch as pl
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

    from dgmrun.models.rbm import RBM

    torch.manual_seed(seed)
    info = {"name": "mnist", "shape": [1, 28, 28], "num_classes": 10, "levels": 2}
    model = RBM.build(info, hidden_dim=256, cd_k=1, persistent=True, num_chains=64, optimizer={"lr": 0.05})
    # Whole batches by slicing, as scikit-learn does (not 64 single-item fetches and a collate per batch).
    dataset = TensorDataset(train.view(-1, 1, 28, 28), torch.zeros(len(train), dtype=torch.long))
    loader = DataLoader(dataset, batch_size=None, sampler=BatchSampler(SequentialSampler(dataset), 64, drop_last=False))

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.times.append(time.perf_counter() - self.start)

    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         log_every_n_steps=50)
    trainer.fit(model, train_dataloaders=loader)
    return float(np.mean(timer.times)), (model.W.detach(), model.b.detach(), model.c.detach()), model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(ROOT))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = load_mnist(Path(args.root))
    print(f"mnist-small thresholded at 0.5: {len(train)} train, {len(test)} test; 256 hidden, batch 64, lr 0.05, "
          f"PCD-1, {args.epochs} epochs, 1 thread each")
    rows = []
    for name, runner in (("scikit-learn BernoulliRBM", run_sklearn), ("dgmrun RBM (Lightning)", run_dgmrun)):
        per_seed = []
        for seed in range(args.seeds):
            seconds, (W, b, c), fitted = runner(train, args.epochs, seed)
            pll = pseudo_log_likelihood(test, W, b, c)
            nll, std, raise_nll = ais_nll(test, W, b, c, train)
            own = float("nan")
            if hasattr(fitted, "score_samples"):
                fitted.random_state = np.random.RandomState(0)
                own = float(np.mean([fitted.score_samples(test.numpy()).mean() for _ in range(5)]))
            per_seed.append((seconds, pll, nll, std, own, raise_nll))
            print(f"  {name} seed {seed}: {seconds:.3f} s/epoch, pseudo-LL {pll:.2f}, AIS NLL {nll:.2f} +- {std:.2f} "
                  f"(runs), RAISE NLL {raise_nll:.2f}", flush=True)
        a = np.array(per_seed)
        rows.append((name, a.mean(0), a.std(0)))
    print()
    e = EvalConfig()
    print(f"| {'model':<26} | s/epoch | test pseudo-LL (5 calls) | test NLL, AIS c{e.ais_chains}-b{e.ais_betas}-r{e.ais_runs} "
          f"| test NLL, RAISE n{e.raise_examples} | sklearn score_samples |")
    print(f"|{'-' * 28}|---------|--------------------------|------------------|-------------------|-----------------------|")
    for name, mean, spread in rows:
        own = f"{mean[4]:.2f}" if not np.isnan(mean[4]) else ""
        print(f"| {name:<26} | {mean[0]:7.3f} | {mean[1]:15.2f} +- {spread[1]:5.2f} | {mean[2]:8.2f} +- {spread[2]:.2f} "
              f"(runs {mean[3]:.2f}) | {mean[5]:8.2f} +- {spread[5]:.2f} | {own:>21} |")
    print(f"(means over {args.seeds} seeds; +- is the spread over seeds)")


if __name__ == "__main__":
    main()
