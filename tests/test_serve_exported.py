"""`bigmodel serve model_path=...`: a folder written by `bigmodel export` answers as its checkpoint does."""

import pytest
import torch

from bigmodel.checkpoint import CheckpointError
from bigmodel.config import ConfigError
from bigmodel.export import export_model
from bigmodel.serve.backend import load_backend
from test_export import train_tiny
from test_serve import LIMITS, b64, png, running

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
BODIES = {
    "cnn": {"images": [b64(png((32, 32), (200, 10, 10))), b64(png((40, 20), (5, 90, 250), "JPEG"))]},
    "lstm": {"texts": ["a good film", "bad , really bad", "what"]},
}


@pytest.mark.parametrize("family", ["cnn", "lstm"])
def test_an_exported_folder_serves_the_checkpoints_predictions(tmp_path, family):
    import httpx

    ckpt = train_tiny(tmp_path, family)
    folder = export_model(str(ckpt), "onnx", tmp_path / "onnx")
    with pytest.raises(ConfigError, match=r"precision=bf16 applies to a checkpoint \(ckpt_path=\)"):
        load_backend(None, str(folder), torch.device("cpu"), LIMITS, precision="bf16")
    with running(str(ckpt)) as (url, _, _):
        want = httpx.post(f"{url}/v1/predict", json=BODIES[family]).json()["predictions"]
    with running(None, model_path=str(folder)) as (url, _, _):
        got = httpx.post(f"{url}/v1/predict", json=BODIES[family]).json()["predictions"]
        info = httpx.get(f"{url}/v1/model").json()
    assert [p["label"] for p in got] == [p["label"] for p in want]
    for g, w in zip(got, want):
        assert list(g["probabilities"]) == list(w["probabilities"])
        assert list(g["probabilities"].values()) == pytest.approx(list(w["probabilities"].values()), abs=1e-4)
    assert (
        info["format"] == "onnx"
        and info["model_path"] == str(folder)
        and info["classes"] == list(got[0]["probabilities"])
    )


def test_an_exported_gpt_is_refused_with_one_line(tmp_path):
    folder = export_model(str(train_tiny(tmp_path, "gpt")), "onnx", tmp_path / "onnx")
    with pytest.raises(CheckpointError, match="serve a GPT from its checkpoint"):
        load_backend(None, str(folder), torch.device("cpu"), LIMITS)
