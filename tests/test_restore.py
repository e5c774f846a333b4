"""restore.py: the one way every command rebuilds a model from a checkpoint."""

import pytest
import torch

from bigmodel.checkpoint import CheckpointError, save_atomic
from bigmodel.models.fasttext import FastText
from bigmodel.restore import restore_model


def _checkpoint(path, **data):
    model = FastText(vocab_size=5, num_classes=2, embed_dim=3)
    config = {"model": {"_target_": "bigmodel.models.fasttext.FastText", "embed_dim": 3}}
    save_atomic(
        {
            "format": 1,
            "config": config,
            "model_args": {"vocab_size": 5, "num_classes": 2},
            "data": data,
            "model": model.state_dict(),
            "progress": {"global_step": 7},
        },
        path,
    )
    return model


def test_restores_the_weights_in_eval_mode_with_what_the_run_saved(tmp_path):
    model = _checkpoint(tmp_path / "a.pt", class_names=["x", "y"])
    restored = restore_model(str(tmp_path / "a.pt"))
    tokens, lengths = torch.tensor([[1, 2, 3], [4, 1, 0]]), torch.tensor([3, 2])
    model.eval()
    assert torch.equal(restored.model(tokens, lengths), model(tokens, lengths)) and not restored.model.training
    assert restored.data["class_names"] == ["x", "y"] and restored.progress["global_step"] == 7
    assert restored.model_args == {"vocab_size": 5, "num_classes": 2}


def test_a_missing_data_key_is_the_callers_line_before_anything_is_built(tmp_path):
    _checkpoint(tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="^no vocabulary here$"):
        restore_model(str(tmp_path / "a.pt"), needs={"vocab": "no vocabulary here"})


def test_a_checkpoint_without_a_model_config_is_refused(tmp_path):
    save_atomic({"format": 1, "config": {}, "model": {}}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="holds no model config"):
        restore_model(str(tmp_path / "b.pt"))
