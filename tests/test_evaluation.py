"""Sample-quality evaluation: the domain classifier (task=train_evaluator), its cache, reference statistics,
FID/KID/IS/PR through task=eval eval.samples, the eval.every_n_epochs callback and the Inception path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dgmrun.errors import DgmrunError
from dgmrun.metrics import features as F
from dgmrun.models.base import GenerativeModel
from dgmrun.metrics.samples import (
    FeatureStream,
    SampleScorer,
    load_samples,
    reference_images,
    reference_statistics,
)
from dgmrun.schema import validate
from tests.conftest import compose_config, fake_mnist, run_dgmrun, write_idx

# The CPU cores are shared: one thread per process avoids oversubscription (many times faster then).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_evaluator(tmp: Path, evaluators: Path, *overrides: str) -> dict:
    from dgmrun.tasks.train_evaluator import train_evaluator

    cfg = compose_config(["task=train_evaluator", "trainer=cpu", "trainer.enable_progress_bar=false",
                          f"paths.evaluators_dir={evaluators}", *overrides], tmp)
    validate(cfg)
    train_evaluator(cfg)
    return json.loads((tmp / "metrics.json").read_text())


@pytest.fixture(scope="module")
def digits_evaluators(tmp_path_factory) -> Path:
    """A digits classifier trained once (fewer epochs than the default) into a private evaluators dir."""
    evaluators = tmp_path_factory.mktemp("evaluators")
    metrics = _train_evaluator(tmp_path_factory.mktemp("train_evaluator"), evaluators, "data=digits",
                               "task.max_epochs.cnn=15")
    assert metrics["test/acc"] > 0.9
    return evaluators


def _digits_cfg(tmp: Path, evaluators: Path, *overrides: str):
    cfg = compose_config(["data=digits", "data.binarize=none", "trainer=cpu", f"paths.evaluators_dir={evaluators}",
                          *overrides], tmp)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- the classifier
@pytest.mark.slow
def test_classifier_reaches_97_percent_on_mnist_small(tmp_path, mnist_small):
    metrics = _train_evaluator(tmp_path, tmp_path / "evaluators", "data=mnist", f"data.root={mnist_small}")
    assert metrics["test/acc"] >= 0.97, metrics
    assert metrics["evaluator/cached"] == 0
    assert Path(metrics["evaluator/path"]).is_file()


def test_evaluator_cache_is_reused_and_invalidated_by_a_data_change(tmp_path):
    root = fake_mnist(tmp_path / "fake")
    evaluators = tmp_path / "evaluators"
    args = ("data=mnist", f"data.root={root}", "task.max_epochs.lenet=1")
    first = _train_evaluator(tmp_path / "a", evaluators, *args)
    assert first["evaluator/cached"] == 0
    weights = Path(first["evaluator/path"])
    stamp = weights.stat().st_mtime_ns

    second = _train_evaluator(tmp_path / "b", evaluators, *args)
    assert second["evaluator/cached"] == 1  # not retrained
    assert second["evaluator/path"] == str(weights) and weights.stat().st_mtime_ns == stamp
    assert second["test/acc"] == pytest.approx(first["test/acc"], abs=1e-6)

    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(100, dtype=np.uint8))  # the data changed
    third = _train_evaluator(tmp_path / "c", evaluators, *args)
    assert third["evaluator/cached"] == 0
    assert third["evaluator/data_checksum"] != first["evaluator/data_checksum"]
    assert Path(third["evaluator/path"]) != weights and Path(third["evaluator/path"]).is_file()


# ----------------------------------------------------------------------------- statistics
def test_feature_stream_keeps_a_bounded_pool_and_exact_statistics():
    feats = torch.randn(2300, 5, dtype=torch.float64)
    stream = FeatureStream(pool_size=300, seed=0)
    for batch in feats.split(500):
        stream.update(batch, torch.full((len(batch), 3), 1 / 3))
    assert stream.count == 2300 and stream.pool.shape == (300, 5)
    np.testing.assert_allclose(stream.stats.mean, feats.mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(stream.stats.cov, np.cov(feats.numpy(), rowvar=False), atol=1e-10)
    # the pool is a random subset of the rows, not the first ones
    rows = {tuple(r) for r in feats.float().tolist()}
    assert all(tuple(r) in rows for r in stream.pool.tolist())
    assert not torch.equal(stream.pool, feats[:300].float())


def test_reference_statistics_cache_hit_and_miss(tmp_path, digits_evaluators):
    cfg = _digits_cfg(tmp_path, digits_evaluators)
    scorer = SampleScorer(cfg, __import__("hydra").utils.instantiate(cfg.data, _convert_="all"))
    network = scorer.network
    assert network is not None and network.name.startswith("classifier:cnn:digits-")
    cache = tmp_path / "refcache"
    first = reference_statistics(network, cfg.data, cache, "train", pool_size=500)
    assert not first.from_cache and first.path.is_file()
    again = reference_statistics(network, cfg.data, cache, "train", pool_size=500)
    assert again.from_cache
    np.testing.assert_array_equal(again.stats.mean, first.stats.mean)
    np.testing.assert_allclose(again.stats.cov, first.stats.cov)
    assert torch.equal(again.features, first.features)
    # another split, sample count, view or feature network is another entry
    assert not reference_statistics(network, cfg.data, cache, "test", pool_size=500).from_cache
    assert not reference_statistics(network, cfg.data, cache, "train", num=200, pool_size=500).from_cache
    binarized = cfg.data.copy()
    binarized.binarize = "dynamic"
    assert not reference_statistics(network, binarized, cache, "train", pool_size=500).from_cache
    other = F.ClassifierFeatures(network.net, network.name, "0" * 64, network.num_classes, network.shape)
    assert not reference_statistics(other, cfg.data, cache, "train", pool_size=500).from_cache
    assert reference_statistics(network, cfg.data, cache, "train", num=200, pool_size=500).count == 200


def test_binarized_reference_is_one_fixed_draw(tmp_path):
    cfg = compose_config(["data=digits", "data.binarize=dynamic"], tmp_path)
    a, b = reference_images(cfg.data, "train"), reference_images(cfg.data, "train")
    assert set(a.unique().tolist()) == {0.0, 1.0} and torch.equal(a, b)
    grey = compose_config(["data=digits", "data.binarize=none"], tmp_path)
    assert len(set(reference_images(grey.data, "test").unique().tolist())) > 2


def test_fid_orders_real_test_images_before_noise(tmp_path, digits_evaluators):
    from hydra.utils import instantiate

    cfg = _digits_cfg(tmp_path, digits_evaluators)
    datamodule = instantiate(cfg.data, _convert_="all")
    scorer = SampleScorer(cfg, datamodule)
    x_test, _ = datamodule.split_tensors("test")
    real = scorer.score(((x, None, None) for x in x_test.split(100)), seed=0)
    noise = torch.rand(len(x_test), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = scorer.score(((x, None, None) for x in noise.split(100)), 0)
    assert real["test/fid"] * 5 < noise["test/fid"], (real["test/fid"], noise["test/fid"])
    assert real["test/kid"] < noise["test/kid"]
    assert real["test/precision"] > 0.6 > noise["test/precision"]
    assert real["test/class_coverage"] == 10 and real["test/class_kl"] < 0.05
    for key in ("fid", "kid", "is", "precision", "recall", "class_coverage", "class_kl"):
        protocol = real[f"test/{key}_protocol"]
        assert isinstance(protocol, str) and "classifier:cnn:digits-" in protocol and "sha256" in protocol
    assert f"{len(x_test)} generated vs" in real["test/fid_protocol"] and "(train split, grey)" in real["test/fid_protocol"]


def test_class_accuracy_of_a_class_conditional_sampler(tmp_path, digits_evaluators):
    """A conditional "model" that returns real test digits of the class asked for scores as the classifier
    does on them; the same digits asked for under shifted labels score near chance."""
    from hydra.utils import instantiate

    from dgmrun.metrics.samples import sample_metrics

    cfg = _digits_cfg(tmp_path, digits_evaluators, "eval.pr_num_samples=200")
    datamodule = instantiate(cfg.data, _convert_="all")
    x_test, y_test = datamodule.split_tensors("test")

    class RealDigits(torch.nn.Module):
        data_info, device = datamodule.info, torch.device("cpu")
        class_conditional, categorical_code = True, False
        sampler_options, sampler, sampler_description = (), GenerativeModel.sampler, GenerativeModel.sampler_description

        def __init__(self, shift: int) -> None:
            super().__init__()
            self.shift = shift

        def sample(self, n, generator=None, classes=None):
            asked = torch.tensor(classes)[torch.arange(n) % len(classes)]
            picks = [torch.nonzero(y_test == (c + self.shift) % 10)[i % 10, 0] for i, c in enumerate(asked.tolist())]
            return x_test[torch.stack(picks)]

    right = sample_metrics(RealDigits(0), datamodule, 300, seed=0, batch_size=128, cfg=cfg)
    wrong = sample_metrics(RealDigits(3), datamodule, 300, seed=0, batch_size=128, cfg=cfg)
    assert right["test/class_accuracy"] > 0.9 and wrong["test/class_accuracy"] < 0.1
    assert "300 generated, classes 0..9 asked for in turn" in right["test/class_accuracy_protocol"]
    assert "test/class_accuracy" not in SampleScorer(cfg, datamodule).score([(x_test[:200], None, None)], seed=0)


def test_code_accuracy_of_an_unsupervised_categorical_code(tmp_path, digits_evaluators):
    """A "model" whose code value k draws real test digits of class perm[k] scores as the classifier does
    on them, whatever the permutation; one whose digits do not depend on the code scores near chance."""
    from hydra.utils import instantiate

    from dgmrun.metrics.samples import sample_metrics

    cfg = _digits_cfg(tmp_path, digits_evaluators, "eval.pr_num_samples=200")
    datamodule = instantiate(cfg.data, _convert_="all")
    x_test, y_test = datamodule.split_tensors("test")
    perm = [3, 9, 0, 4, 1, 7, 2, 8, 6, 5]

    class CodedDigits(torch.nn.Module):
        data_info, device = datamodule.info, torch.device("cpu")
        class_conditional, categorical_code = False, True
        sampler_description = GenerativeModel.sampler_description

        def __init__(self, follows_code: bool) -> None:
            super().__init__()
            self.follows_code = follows_code

        def sample(self, n, generator=None):
            raise AssertionError("the evaluation draws through sample_by_code")

        def sample_by_code(self, n, generator=None):
            codes = torch.arange(n) % 10
            if self.follows_code:
                picks = [torch.nonzero(y_test == perm[k])[i % 10, 0] for i, k in enumerate(codes.tolist())]
            else:
                picks = torch.randperm(len(x_test), generator=generator)[:n].tolist()
            return x_test[torch.tensor(picks)], codes

    coded = sample_metrics(CodedDigits(True), datamodule, 300, seed=0, batch_size=128, cfg=cfg)
    uncoded = sample_metrics(CodedDigits(False), datamodule, 300, seed=0, batch_size=128, cfg=cfg)
    assert coded["test/code_accuracy"] > 0.9 and uncoded["test/code_accuracy"] < 0.35
    assert "300 generated" in coded["test/code_accuracy_protocol"] and "Hungarian" in coded["test/code_accuracy_protocol"]
    assert "test/class_accuracy" not in coded


# ----------------------------------------------------------------------------- task=eval eval.samples
def _assert_ok(out) -> Path:
    assert out.returncode == 0, f"dgmrun failed:\nSTDOUT:\n{out.stdout[-3000:]}\nSTDERR:\n{out.stderr[-3000:]}"
    return Path(out.stdout.strip().splitlines()[-1].removeprefix("run dir: "))


@pytest.mark.slow
def test_eval_samples_npz_end_to_end(tmp_path, digits_evaluators):
    from dgmrun.data.datamodule import Digits
    from dgmrun.io import save_samples_npz

    x_test, _ = Digits.build(binarize="none").split_tensors("test")
    save_samples_npz(tmp_path / "real.npz", x_test)
    save_samples_npz(tmp_path / "noise.npz", torch.rand(len(x_test), 1, 8, 8))
    results = {}
    for name in ("real", "noise"):
        out = run_dgmrun("task=eval", f"eval.samples={name}.npz", "data.binarize=none",
                         f"paths.evaluators_dir={digits_evaluators}", f"hydra.run.dir=runs/{name}",
                         cwd=tmp_path, env=ONE_THREAD)
        run = _assert_ok(out)
        results[name] = json.loads((run / "metrics.json").read_text())
    real, noise = results["real"], results["noise"]
    print({k: (real[k], noise[k]) for k in real if isinstance(real[k], float)})
    assert real["test/samples"] == str(tmp_path / "real.npz") and real["test/num_samples"] == len(x_test)
    assert real["test/precision"] > 0.6 and real["test/recall"] > 0.6
    assert noise["test/precision"] < 0.3 and noise["test/recall"] < 0.3
    assert real["test/fid"] * 5 < noise["test/fid"]
    assert real["test/is"] > noise["test/is"] or real["test/class_coverage"] >= noise["test/class_coverage"]
    assert "classifier:cnn:digits-" in real["test/fid_protocol"]


def test_eval_samples_folder_of_pngs(tmp_path):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    batches, n = load_samples(folder, (1, 8, 8))
    x = torch.cat(list(batches))
    assert n == 3 and x.shape == (3, 1, 8, 8) and x[2].max().item() == pytest.approx(80 / 255)
    with pytest.raises(DgmrunError, match="expects 28x28"):
        list(load_samples(folder, (1, 28, 28))[0])


def test_eval_needs_a_checkpoint_or_samples(cfg_factory):
    with pytest.raises(DgmrunError, match="ckpt_path=.*or eval.samples="):
        validate(cfg_factory("task=eval"))


@pytest.mark.slow
def test_without_an_evaluator_one_note_and_likelihood_metrics(tmp_path):
    out = run_dgmrun("trainer.max_epochs=1", "sample.every_n_epochs=0", "eval.every_n_epochs=1",
                     f"paths.evaluators_dir={tmp_path / 'none'}", "hydra.run.dir=run", cwd=tmp_path, env=ONE_THREAD)
    run = _assert_ok(out)
    text = out.stdout + out.stderr
    assert text.count("dgmrun task=train_evaluator data=digits") == 1, text[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/nll" in metrics and "test/fid" not in metrics and "val/fid" not in metrics
    # task=eval on a folder without an evaluator: an error that says how to get one
    out = run_dgmrun("task=eval", f"eval.samples={tmp_path}", f"paths.evaluators_dir={tmp_path / 'none'}",
                     "hydra.run.dir=run2", cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 1 and "dgmrun task=train_evaluator data=digits" in out.stderr


def test_metrics_during_training_and_at_the_end(tmp_path, digits_evaluators):
    from dgmrun.tasks.train import train

    cfg = _digits_cfg(tmp_path, digits_evaluators, "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                      "sample.every_n_epochs=0", "eval.every_n_epochs=1", "eval.num_samples_during_training=200",
                      "eval.num_samples=300", "eval.pr_num_samples=300")
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/nll", "test/fid", "test/kid", "test/kid_std", "test/is", "test/is_std", "test/precision",
                "test/recall", "test/class_coverage", "test/class_kl", "val/fid", "val/precision"):
        assert key in metrics, key
    assert "300 generated" in metrics["test/fid_protocol"]
    csv = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert "val/fid" in header
    fids = [row.split(",")[header.index("val/fid")] for row in csv[1:]]
    assert len([f for f in fids if f]) == 2  # one per epoch


# ----------------------------------------------------------------------------- Inception-v3
def _blocker(tmp_path: Path) -> Path:
    """A folder whose torch_fidelity.py fails to import, as when the package is not installed."""
    folder = tmp_path / "block"
    folder.mkdir(exist_ok=True)
    (folder / "torch_fidelity.py").write_text("raise ModuleNotFoundError(name='torch_fidelity')\n")
    return folder


@pytest.mark.slow
def test_inception_without_torch_fidelity_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    with pytest.raises(DgmrunError) as error:
        F.InceptionFeatures(str(tmp_path / F.INCEPTION_FILE), tmp_path)
    message = str(error.value)
    assert 'pip install "dgmrun[inception]"' in message and F.INCEPTION_FILE in message
    assert "eval.inception_weights=PATH" in message and "\n" not in message
    cfg = {"feature_network": "inception", "inception_weights": str(tmp_path / F.INCEPTION_FILE)}
    with pytest.raises(DgmrunError, match="torch_fidelity is not installed"):
        F.resolve_feature_network(cfg, tmp_path, "digits", "0" * 64)
    # task=train refuses before training, with the same message
    out = run_dgmrun("eval.feature_network=inception", f"eval.inception_weights={tmp_path / F.INCEPTION_FILE}",
                     "hydra.run.dir=run", cwd=tmp_path, env={**ONE_THREAD, "PYTHONPATH": str(_blocker(tmp_path))})
    assert out.returncode == 1 and 'pip install "dgmrun[inception]"' in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
    # auto without a classifier and without inception_weights: nothing, no error
    assert F.resolve_feature_network({"feature_network": "auto"}, tmp_path, "digits", "0" * 64) is None


def test_inception_with_torch_fidelity(tmp_path):
    pytest.importorskip("torch_fidelity")
    pytest.importorskip("torchvision")
    with pytest.raises(DgmrunError, match="no such file"):
        F.InceptionFeatures(str(tmp_path / F.INCEPTION_FILE), tmp_path)
    weights = Path(F.INCEPTION_FILE)
    import os

    path = os.environ.get("DGMRUN_INCEPTION_WEIGHTS")
    if not path or not Path(path).is_file():
        pytest.skip(f"set DGMRUN_INCEPTION_WEIGHTS to a local {weights}")
    network = F.InceptionFeatures(path)
    feats, probs = network(torch.rand(4, 1, 28, 28))
    assert feats.shape == (4, 2048) and probs.shape == (4, 1008)
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-4)


@pytest.mark.parametrize("shape, arch", [((1, 8, 8), "cnn"), ((1, 28, 28), "lenet"), ((3, 32, 32), "resnet"),
                                         ((3, 64, 64), "resnet")])
def test_classifier_architectures_give_128_features_and_probabilities(shape, arch):
    assert F.classifier_arch(shape) == arch
    net = F.build_classifier(arch, shape, 10)
    feats, probs = F.ClassifierFeatures(net, f"classifier:{arch}:x", "0" * 64, 10, shape)(torch.rand(3, *shape))
    assert feats.shape == (3, F.FEATURE_DIM) and probs.shape == (3, 10)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
