"""`bigmodel quantize`: every model family becomes an int8 exported folder that is smaller, scores
within a bound of fp32 on a small split, runs under eval/predict's loader, and bad requests fail in one line."""

import json
import shutil

import onnx
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import test_export
from bigmodel.config import ConfigError
from bigmodel.data.errors import DataError
from bigmodel.export import export_model
from bigmodel.exported import load_exported
from bigmodel.quantize import bench_inputs, choose_method, latency, quantize
from bigmodel.restore import restore_model
from conftest import compose_cfg, run_cli
from test_export import train_tiny, uneven_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

FAMILIES = {  # family -> (the method auto picks, an ONNX op only its int8 graph has)
    "lstm": ("dynamic", "DynamicQuantizeLSTM"),
    "transformer": ("dynamic", "MatMulInteger"),
    "cnn": ("static", "QuantizeLinear"),
    "gpt": ("dynamic", "MatMulInteger"),
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:  # export's tiny CNN is so small that int8 scales outweigh it
        patch.setitem(test_export.TINY, "cnn", [*test_export.TINY["cnn"], "model.stem_width=8", "model.widths=[16,32]"])
        out = {family: train_tiny(root, family) for family in FAMILIES}
    torch.set_num_threads(n)
    return out


def run_quantize(tmp_path, *overrides: str):
    cfg = compose_cfg("quantize", [f"output_dir={tmp_path}/int8", "bench_repeats=1", *overrides], tmp_path / "run")
    try:
        return quantize(cfg)
    finally:
        GlobalHydra.instance().clear()


def test_auto_picks_static_for_images_and_dynamic_for_text_and_the_gpt():
    assert choose_method("image_classification", "auto") == "static"
    assert choose_method("text_classification", "auto") == "dynamic"
    assert choose_method("language_model", "auto") == "dynamic"
    with pytest.raises(
        ConfigError, match="method=static is not available for a text classification model; use method=dynamic"
    ):
        choose_method("text_classification", "static")


def test_latency_times_every_runner_on_the_same_inputs():
    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(x):
            calls[name] += 1
            return x

        return run

    times = latency({"a": runner("a"), "b": runner("b")}, (torch.zeros(1),), repeats=3, calls=2)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls == {"a": 9, "b": 9}  # 3 rounds of one untimed call and 2 timed


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_quantize_gives_a_smaller_int8_model_that_scores_like_fp32(ckpts, tmp_path, family):
    method, int8_op = FAMILIES[family]
    out = run_quantize(tmp_path, f"ckpt_path={ckpts[family]}")
    spec = json.loads((out / "bigmodel.json").read_text())
    assert spec["quantization"]["method"] == method and spec["quantization"]["dtype"] == "int8"
    calibrated = spec["quantization"]["calib_batches"]
    assert (1 <= calibrated <= 8) if method == "static" else calibrated == 0  # 8 asked; the tiny split has 5
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert int8_op in ops  # the heavy layers really run in int8 (a weight left as fp32 would not show it)
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["file_bytes"]["int8"] < report["file_bytes"]["fp32"]
    fp32, int8 = report["metrics"]["fp32"], report["metrics"]["int8"]
    if family == "gpt":  # validation loss
        assert abs(int8 - fp32) <= 0.05 * fp32
    else:  # test accuracy on the small split the tiny run wrote
        assert abs(int8 - fp32) <= 0.15
    for batch, times in report["latency_ms"].items():
        assert set(times) == {"fp32 eager", "fp32 onnx", "int8 onnx"}, batch
    assert (out / "quantize_report.md").read_text().startswith("| model |")
    # the folder loads like any export: int8 logits follow the checkpoint's on a batch unlike the calibration
    restored = restore_model(str(ckpts[family]))
    inputs = uneven_inputs(restored, family)
    with torch.no_grad():
        want = restored.model(*inputs)
    got = load_exported(out)(*inputs)
    assert got.shape == want.shape
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8
    assert (got - want).abs().max() < 0.1 * want.abs().max() + 0.05


@pytest.mark.slow
def test_quantize_takes_an_onnx_export_and_refuses_a_pt2_or_int8_one(ckpts, tmp_path):
    onnx_dir = export_model(str(ckpts["lstm"]), "onnx", tmp_path / "onnx")
    out = run_quantize(tmp_path, f"model_path={onnx_dir}", "bench=false")
    assert json.loads((out / "bigmodel.json").read_text())["quantization"]["method"] == "dynamic"
    with pytest.raises(ConfigError, match="already int8"):
        run_quantize(tmp_path / "again", f"model_path={out}")
    pt2 = export_model(str(ckpts["lstm"]), "pt2", tmp_path / "pt2")
    with pytest.raises(ConfigError, match="quantize needs an ONNX export"):
        run_quantize(tmp_path / "pt2q", f"model_path={pt2}")


@pytest.mark.slow
def test_static_without_its_training_data_fails_in_one_line(ckpts, tmp_path):
    onnx_dir = export_model(str(ckpts["cnn"]), "onnx", tmp_path / "onnx")
    moved = tmp_path / "moved"
    data = ckpts["cnn"].parents[2] / "data" / "cifar10"
    shutil.move(data, moved)  # the run's data is gone: nothing to calibrate on
    try:
        with pytest.raises(DataError):
            run_quantize(tmp_path, f"model_path={onnx_dir}")
    finally:
        shutil.move(moved, data)
    assert not (tmp_path / "int8").exists()


def test_bench_inputs_draw_a_batch_from_the_whole_split():
    class Loader:  # two batches sorted by length, as the text loaders give them
        def loader(self, split):
            yield (torch.ones(3, 2, dtype=torch.long), torch.tensor([1, 2, 2])), torch.zeros(3)
            yield (torch.ones(3, 5, dtype=torch.long), torch.tensor([4, 5, 3])), torch.zeros(3)

    (tokens, lengths), (one_tokens, one_lengths) = bench_inputs(Loader(), "test", n=6)
    assert sorted(lengths.tolist()) == [1, 2, 2, 3, 4, 5] and tokens.shape == (6, 5)
    assert one_tokens.shape == (1, int(one_lengths[0]))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give exactly one of ckpt_path=<best.pt> and model_path="),
        (["ckpt_path=a.pt", "model_path=b"], "give exactly one of ckpt_path=<best.pt> and model_path="),
        (["ckpt_path=a.pt", "calib_batches=0"], "calib_batches=0 is out of range; valid: >= 1"),
        (["ckpt_path=a.pt", "threads=0"], "threads=0 is out of range; valid: >= 1"),
        (["ckpt_path=a.pt", "eval_batches=-5"], "eval_batches=-5 is out of range; valid: -1 (all) or >= 1"),
        (["ckpt_path=a.pt", "bench=maybe"], "bench='maybe' is not valid: use true or false"),
        (["ckpt_path=a.pt", "method=int4"], "method='int4' is not valid; use auto, dynamic or static"),
    ],
)
def test_bad_requests_fail_before_any_work(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_quantize(tmp_path, *args)


def test_cli_prints_one_line_for_a_bad_request(tmp_path):
    result = run_cli("quantize", "ckpt_path=a.pt", "model_path=b", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(lines) == 1 and "give exactly one of ckpt_path" in lines[0]
