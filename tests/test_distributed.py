"""Several processes (2 CPU processes with Gloo): rank sharding, DDP and FSDP give the same weights
as one process with the same global batch, one run folder written by rank 0 only, full checkpoints."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigmodel import checkpoint, distributed
from bigmodel.data.loading import ResumableSampler
from bigmodel.models.gpt import GPT
from conftest import run_cli

WORDS = "the quick brown fox jumps over a lazy dog and then runs far away".split()
CORPUS_CHARS = 6560  # val = last 656 chars = 40 blocks of 16: splits evenly over 2 ranks (no padding)
GPT_SMALL = [
    "model=gpt",
    "data=text_lm",
    "model.block_size=16",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=16",
    "data.eval_batch_size=10",
    "trainer.max_steps=4",
    "trainer.device=cpu",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "test=false",
    "optimizer=sgd",
    "optimizer.lr=0.5",
    "optimizer.momentum=0.9",
]
GLOBAL_BATCH = 8


def write_corpus(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    words = [WORDS[i] for i in torch.randint(len(WORDS), (2000,), generator=g).tolist()]
    text = "\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 12))
    (root / "data" / "text").mkdir(parents=True, exist_ok=True)
    (root / "data" / "text" / "corpus.txt").write_text(text[:CORPUS_CHARS])


def run_torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=nproc -m bigmodel <args>` as a user runs it, outputs under cwd."""
    env = {
        **os.environ,
        "BIGMODEL_LOG_DIR": str(cwd / "logs"),
        "BIGMODEL_CACHE_DIR": str(cwd / "cache"),
        "BIGMODEL_DATA_DIR": str(cwd / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "bigmodel",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "logs").glob("*/runs/*") if p.is_dir()]
    assert len(runs) == 1, runs  # every rank used rank 0's folder; no stray folders
    return runs[0]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def curve(run_dir: Path, name: str) -> list[float]:
    rows = (line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[1:])
    return [float(value) for _, key, value in rows if key == name]


def val_loss(out: str) -> float:
    return float(re.findall(r"val/loss=([0-9.]+)", out)[-1])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 8: the reference run."""
    cwd = tmp_path_factory.mktemp("single")
    write_corpus(cwd)
    out = run_cli("train", *GPT_SMALL, f"data.batch_size={GLOBAL_BATCH}", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return out, only_run_dir(cwd)


def assert_same_training(run_dir: Path, out: str, single) -> None:
    ref_out, ref_dir = single
    ref, got = final_weights(ref_dir), final_weights(run_dir)
    assert ref.keys() == got.keys()
    for k in ref:
        assert got[k].shape == ref[k].shape, k  # full tensors, not shards
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=k)
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["global_step"] == 4
    assert val_loss(out) == pytest.approx(val_loss(ref_out.stdout), abs=1e-4)  # reduced across ranks
    for name in ("train/loss", "train/acc"):  # over every process's samples, as one process sees them
        assert curve(run_dir, name) == pytest.approx(curve(ref_dir, name), abs=1e-4), name


def assert_rank_zero_wrote_everything(run_dir: Path, out: str) -> None:
    assert out.count("model GPT:") == 1  # ranks > 0 log warnings only
    assert (run_dir / "train.log").read_text().count("model GPT:") == 1
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}
    assert len(writers) == 1  # one process id wrote TensorBoard files
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.pt", "last.pt"}


def test_ranks_split_each_global_batch_exactly():
    """2 ranks x 8 see, at each step, exactly the 16 samples 1 process x 16 sees."""
    n, per_rank = 100, 8

    def batches(sampler, size):
        idx = list(sampler)
        return [set(idx[i : i + size]) for i in range(0, len(idx) - size + 1, size)]

    one = batches(ResumableSampler(n, shuffle=True, seed=3, epoch=1), 2 * per_rank)
    ranks = [
        batches(ResumableSampler(n, shuffle=True, seed=3, epoch=1, rank=r, world_size=2), per_rank) for r in range(2)
    ]
    assert len(one) == 6
    for step, expected in enumerate(one):
        assert ranks[0][step] | ranks[1][step] == expected and not ranks[0][step] & ranks[1][step]


def test_optimizer_state_saved_by_name_loads_into_a_plain_model():
    """FSDP checkpoints key optimizer state by parameter name; a plain run resumes from them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    by_name = distributed._keyed_by_name(model, opt, opt.state_dict())
    assert set(by_name["state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}

    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    distributed.load_optimizer_state_dict(model, fresh, by_name)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"])


def test_ddp_two_gloo_processes_match_one_process_fast(tmp_path, one_thread):
    """Fast (in `make test-fast`): 2 spawned Gloo processes, batch 4 each == 1 process, batch 8 (same
    weights on both ranks, the same train loss and the val loss reduced across ranks)."""
    import socket

    import torch.multiprocessing as mp

    from helpers import ddp_worker, make_trainer

    config = dict(bn=False, augment=False, max_steps=3, lr=0.5, accumulate_grad_batches=2)  # syncs once a step
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_worker, args=(2, port, str(tmp_path), {**config, "batch_size": 4}), nprocs=2, join=True)
    single = make_trainer(batch_size=8, **config)
    single.fit()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for name, ref in single.model.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["model"][name], ref, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(single.model.state_dict()["1.weight"], make_trainer(bn=False).model.state_dict()["1.weight"])
    got = {k: v for _, k, v in ranks[0]["rows"] if k in ("train/loss", "val/loss")}
    ref = {k: v for _, k, v in single.logger.rows if k in ("train/loss", "val/loss")}
    assert got == pytest.approx(ref, abs=1e-5)
    assert ranks[1]["rows"] == []  # only rank 0 logs


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path, single):
    """trainer.devices=2 (torchrun, Gloo), batch 4 per process == one process, batch 8."""
    write_corpus(tmp_path)
    out = run_cli("train", *GPT_SMALL, f"data.batch_size={GLOBAL_BATCH // 2}", "trainer.devices=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert_same_training(run_dir, out.stdout, single)
    assert_rank_zero_wrote_everything(run_dir, out.stdout)


@pytest.mark.slow
def test_fsdp_two_processes_match_and_save_a_full_checkpoint(tmp_path, single):
    """torchrun ... trainer.strategy=fsdp: same weights; last.pt loads into an unwrapped GPT. The text
    sample (a forward per token on the sharded model) runs on every rank and is logged once."""
    write_corpus(tmp_path)
    out = run_torchrun(
        "train",
        *GPT_SMALL,
        f"data.batch_size={GLOBAL_BATCH // 2}",
        "trainer.strategy=fsdp",
        "callbacks.text_sample.max_new_tokens=8",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert_same_training(run_dir, out.stdout, single)
    assert_rank_zero_wrote_everything(run_dir, out.stdout)
    assert out.stdout.count("sample at step 4 ") == 1  # one process samples (and logs) it

    ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    plain = GPT(**ckpt["model_args"], block_size=16, n_layer=2, n_head=2, n_embd=16)
    checkpoint.load_model_state(plain, ckpt["model"])
    torch.testing.assert_close(plain.tok_emb.weight, ckpt["model"]["tok_emb.weight"])


def test_devices_shortcut_checks_its_value_and_skips_sweeps(capsys, monkeypatch):
    from bigmodel import launch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(SystemExit, match="trainer.devices='two' is not an integer"):
        launch.maybe_launch(["trainer.devices=two"])
    launch.maybe_launch(["-m", "trainer.devices=2", "optimizer.lr=1e-3,3e-3"])  # returns: no torchrun
    assert "ignored in a sweep" in capsys.readouterr().err
    assert launch.prepare(["trainer.devices=1", "seed=3"]) == ["trainer.devices=1", "seed=3"]


def test_devices_from_a_config_file_warns_in_one_process(compose_train, caplog, monkeypatch):
    from bigmodel import launch
    from bigmodel.train import warn_single_process

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("WARNING", logger="bigmodel"):
        warn_single_process(compose_train(["trainer.devices=1"]))
        assert caplog.text == ""
        warn_single_process(compose_train(["trainer.devices=2"]))  # as if set in an experiment file
    assert "trainer.devices=2, but this is one process" in caplog.text
    started = []

    class FakeTorchrun:
        def __init__(self, cmd):
            started.append(cmd)

        def wait(self):
            return 0

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch.subprocess, "Popen", FakeTorchrun)
    monkeypatch.setattr(launch.signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit):
        launch.maybe_launch(["++trainer.devices=2"])  # the ++ form starts torchrun too
    assert "--nproc_per_node=2" in started[0] and started[0][-1] == "++trainer.devices=2"


EMA_RUN = ["callbacks=ema", "callbacks.ema.decay=0.9", "trainer.val_check_interval=2"]  # a validation mid-run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ema_under_two_processes_matches_one_process(tmp_path, strategy):
    """callbacks.ema with 2 processes: the same average and weights as one process, also after the
    average was swapped in for a validation mid-run (FSDP: each rank averages its shards)."""
    write_corpus(tmp_path / "one")
    ref = run_cli("train", *GPT_SMALL, *EMA_RUN, f"data.batch_size={GLOBAL_BATCH}", cwd=tmp_path / "one")
    assert ref.returncode == 0, ref.stderr[-3000:]
    write_corpus(tmp_path / "two")
    out = run_torchrun(
        "train",
        *GPT_SMALL,
        *EMA_RUN,
        f"data.batch_size={GLOBAL_BATCH // 2}",
        f"trainer.strategy={strategy}",
        "callbacks.text_sample.max_new_tokens=4",
        cwd=tmp_path / "two",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    a = checkpoint.load(only_run_dir(tmp_path / "one") / "checkpoints" / "last.pt")
    b = checkpoint.load(only_run_dir(tmp_path / "two") / "checkpoints" / "last.pt")
    assert b["callbacks"]["ema"]["updates"] == 4 and not b["callbacks"]["ema"]["swapped"]
    for name, t in a["model"].items():
        torch.testing.assert_close(b["model"][name], t, rtol=0, atol=1e-6, msg=name)
    for name, t in a["callbacks"]["ema"]["average"].items():
        assert b["callbacks"]["ema"]["average"][name].shape == t.shape, name  # full tensors, not shards
        torch.testing.assert_close(b["callbacks"]["ema"]["average"][name], t, rtol=0, atol=1e-6, msg=name)
    assert val_loss(out.stdout) == pytest.approx(val_loss(ref.stdout), abs=1e-4)  # evaluated on the average
