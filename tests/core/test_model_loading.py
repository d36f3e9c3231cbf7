"""Model and data files from strangers: pickles never run without the opt-in."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from quantune.data_loading import load_batches
from quantune.errors import UserInputError
from quantune.model_loading import load_model


class _Payload:
    """Unpickling this calls os.system-like code: writes a marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_never_runs_without_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    with open(evil, "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(UserInputError):
        load_model(str(evil))
    assert not marker.exists()


def test_pickled_module_needs_trust(convnet, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(convnet, path)
    with pytest.raises(UserInputError, match="--trust-remote-code"):
        load_model(str(path))
    loaded = load_model(str(path), trust_remote_code=True)
    assert isinstance(loaded.model, torch.nn.Module)


def test_state_dict_needs_factory(tmp_path):
    from quantune.example import build_model

    path = tmp_path / "weights.pt"
    torch.save(build_model().state_dict(), path)
    with pytest.raises(UserInputError, match="--model-factory"):
        load_model(str(path))
    loaded = load_model(str(path), model_factory="quantune.example:build_model")
    assert loaded.factory == "quantune.example:build_model"


def test_truncated_file_is_a_clear_error(convnet, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(convnet.state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserInputError):
        load_model(str(path), model_factory="quantune.example:build_model")


def test_data_formats(tmp_path):
    x, y = torch.randn(10, 3), torch.arange(10)
    torch.save((x, y), tmp_path / "d.pt")
    batches = load_batches(str(tmp_path / "d.pt"), batch_size=4)
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    np.save(tmp_path / "d.npy", x.numpy())
    assert len(load_batches(str(tmp_path / "d.npy"), 5)) == 2
    np.savez(tmp_path / "d.npz", inputs=x.numpy(), labels=y.numpy())
    b = load_batches(str(tmp_path / "d.npz"), 10)
    assert torch.equal(b[0][1], y)
    with pytest.raises(UserInputError):
        load_batches(str(tmp_path / "nope.pt"))
    (tmp_path / "bad.xyz").write_text("x")
    with pytest.raises(UserInputError, match="Unknown data format"):
        load_batches(str(tmp_path / "bad.xyz"))
