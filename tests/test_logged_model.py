"""The model logged with every run: raw uint8 images of any batch size, checkpoint predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CONF, run_cli, synthetic_args


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One tiny fit of LeNet-5 on synthetic data that logs its model (a module-wide store)."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("logged")
    mp.chdir(d)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d / 'mlflow.db'}")
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    res = run_cli(["fit", "--config", str(CONF / "lenet5_mnist.yaml"),
                   *synthetic_args(n_train=128, n_test=128), "--trainer.max_epochs", "1",
                   "--model.lr", "0.05"])  # fmt: skip
    yield res, d
    mlflow.set_tracking_uri(before)
    mp.undo()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)


def _checkpoint_logits(res, images: np.ndarray) -> np.ndarray:
    """What the checkpoint gives for ``images`` normalised as the synthetic DataModule does."""
    from robust_ft.checkpoints import load_net_weights
    from robust_ft.models import build

    net = build("lenet5", num_classes=10).eval()
    load_net_weights(net, res.checkpoints["best"])
    x = (torch.from_numpy(images).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        return net(x).numpy()


def test_logged_model_takes_uint8_batches_of_any_size(logged):
    import mlflow

    res, d = logged
    uri = f"runs:/{res.run_id}/model"
    pyfunc = mlflow.pyfunc.load_model(uri)
    inputs = pyfunc.metadata.get_input_schema().inputs
    assert inputs[0].type == np.dtype(np.uint8) and inputs[0].shape == (-1, 1, 28, 28)
    module = mlflow.pytorch.load_model(uri)
    assert isinstance(module, torch.nn.Module) and module.eval() is module
    for n in (1, 2, 128):
        images = _images(n, seed=n)
        expected = _checkpoint_logits(res, images)
        got = pyfunc.predict(images)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            direct = module(torch.from_numpy(images)).numpy()
        assert (direct.argmax(1) == expected.argmax(1)).all()


def test_logged_model_refuses_nothing_uint8_nhw(logged):
    """A (N,H,W) batch of one-channel images is (N,1,H,W)."""
    import mlflow

    res, _ = logged
    module = mlflow.pytorch.load_model(f"runs:/{res.run_id}/model")
    images = _images(3)
    with torch.no_grad():
        a = module(torch.from_numpy(images[:, 0])).numpy()
        b = module(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(a, b)
