"""Data-parallel training on CPU (gloo): 2 processes x micro-batch 2 equal 1 process x micro-batch 4, and
a 2-process checkpoint resumes in 1 process at the same global micro-batch.

The two processes are real ones (``torch.multiprocessing`` spawn, the environment torchrun would set), so
the process group, the sharding, the all-reduces and the rank-0-only writes are what a run uses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.conftest import make_tiny_llama
from tunesmith.config import FullMethod, LoraMethod, TrainConfig
from tunesmith.errors import RunError
from tunesmith.methods import prepare_model
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.distributed import World, shard, start_world
from tunesmith.train.loop import TokenData, _check_resume_shape, train_loop

VOCAB = 128
PAD = 2
TOL = 1e-5


def _data() -> TokenData:
    """9 examples of lengths 5..16 (ranks hold different token counts); global batch 4 leaves a last batch
    of 1, so rank 1's share is empty there."""
    g = torch.Generator().manual_seed(0)
    ids, labels = [], []
    for _ in range(9):
        length = int(torch.randint(5, 17, (1,), generator=g))
        row = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        ids.append(row)
        labels.append([-100] * 2 + row[2:])
    return TokenData(ids, labels)


def _train(
    run_dir: Path,
    batch_size: int,
    out: Path,
    save_every: int | None = None,
    resume=False,
    sharding: str = "none",
    method: Any = None,
) -> None:
    cfg = TrainConfig(
        epochs=2,
        batch_size=batch_size,
        lr=1e-2,
        scheduler="linear",
        log_every=1,
        precision="fp32",
        save_every=save_every,
        sharding=sharding,
    )
    model = prepare_model(make_tiny_llama(VOCAB), method or FullMethod())
    train_loop(model, _data(), None, cfg, seed=0, run_dir=run_dir, pad_id=PAD, resume=resume)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters()}, str(out))


def _worker(
    rank: int, world: int, port: int, run_dir: str, sharding: str, method: Any, resume: bool = False
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from tunesmith.train import loop

    def recorded_shard_copy(model: Any) -> Any:  # what each rank holds of the parameters it trains
        sharded = real_shard_copy(model)
        held = sum(p.to_local().numel() for p in sharded.parameters())
        (Path(run_dir) / f"held-{rank}.json").write_text(json.dumps([held, _numel(model)]))
        return sharded

    real_shard_copy, loop.shard_copy = loop.shard_copy, recorded_shard_copy
    out = Path(run_dir) / f"weights-{rank}.safetensors"
    _train(Path(run_dir), 2, out, save_every=3, sharding=sharding, method=method, resume=resume)
    torch.distributed.destroy_process_group()


def _numel(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows]


@pytest.mark.parametrize(
    ("sharding", "method"),
    [("none", None), ("fsdp", None), ("fsdp", LoraMethod(r=4, alpha=8, dropout=0.0))],
    ids=["data-parallel", "fsdp-full", "fsdp-lora"],
)
def test_two_processes_match_one(tmp_path, sharding, method):
    """Plain data parallelism and FSDP (parameters, gradients and AdamW moments split across the ranks):
    the one-process losses and weights either way, and the checkpoints are whole tensors, so a sharded
    run's checkpoint resumes in one unsharded process."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _train(one, 4, one / "weights.safetensors", method=method)
    args = (2, _free_port(), str(two), sharding, method)
    mp.start_processes(_worker, args=args, nprocs=2, start_method="spawn")

    assert len(_losses(one)) == 6  # 3 global batches (4, 4, 1) per epoch, 2 epochs
    assert _losses(two) == pytest.approx(_losses(one), abs=TOL)
    reference = load_file(str(one / "weights.safetensors"))
    for rank in (0, 1):  # every rank ends with the one-process weights
        weights = load_file(str(two / f"weights-{rank}.safetensors"))
        for name, tensor in reference.items():
            torch.testing.assert_close(weights[name], tensor, atol=TOL, rtol=0)
    held = (
        [json.loads((two / f"held-{rank}.json").read_text()) for rank in (0, 1)] if sharding != "none" else []
    )
    for mine, whole in held:  # each rank holds about half of every parameter (rows split in two)
        assert 0.45 * whole < mine < 0.55 * whole
    extra = [f"held-{rank}.json" for rank in (0, 1)] if held else []
    assert sorted(p.name for p in two.iterdir()) == [  # rank 1 wrote nothing of the run's own
        "checkpoints",
        *extra,
        "metrics.jsonl",
        "weights-0.safetensors",
        "weights-1.safetensors",
    ]

    # Resume on another world size, same global micro-batch: 1 process x 4 from the 2 x 2 run's step 3.
    shutil.rmtree(two / "checkpoints" / "step-000006")
    if sharding == "fsdp":  # and sharded again: whole tensors cut back into each rank's slices
        again = tmp_path / "again"
        shutil.copytree(two, again)
        args = (2, _free_port(), str(again), sharding, method, True)
        mp.start_processes(_worker, args=args, nprocs=2, start_method="spawn")
        assert _losses(again) == pytest.approx(_losses(one), abs=TOL)
        weights = load_file(str(again / "weights-1.safetensors"))
        for name, tensor in reference.items():
            torch.testing.assert_close(weights[name], tensor, atol=TOL, rtol=0)
    _train(two, 4, two / "resumed.safetensors", resume=True, method=method)
    assert _losses(two) == pytest.approx(_losses(one), abs=TOL)
    resumed = load_file(str(two / "resumed.safetensors"))
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, atol=TOL, rtol=0)


def test_shards_cover_the_global_batch_in_order():
    assert [shard([5, 6, 7, 8], World(r, 2)) for r in (0, 1)] == [[5, 6], [7, 8]]
    assert [shard([5, 6, 7], World(r, 2)) for r in (0, 1)] == [[5, 6], [7]]
    assert [shard([5], World(r, 2)) for r in (0, 1)] == [[5], []]


def test_resume_with_another_global_micro_batch_says_how(tmp_path):
    cfg = TrainConfig(batch_size=2)
    same = ckpt.TrainState(global_micro_batch=4)
    _check_resume_shape(same, cfg, World(0, 2), tmp_path)  # 2 x 2 = 4: the same data position
    with pytest.raises(RunError, match=r"this run has 2 x 1 = 2.*train.batch_size=4"):
        _check_resume_shape(ckpt.TrainState(global_micro_batch=4), cfg, World(0, 1), tmp_path)


def test_an_accelerate_fsdp_launch_is_refused_and_pointed_to_train_sharding(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RunError, match=r"ACCELERATE_USE_FSDP is set.*MULTI_CPU.*train.sharding=fsdp"):
        start_world()


@pytest.mark.slow  # two fresh processes import the whole stack: ~1 min on 2 loaded cores
@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_cli_nproc_2_trains_a_head_run_with_rank_0_writing(tmp_path, tiny_model_dir, sharding):
    import yaml

    from tunesmith.cli import main

    rows = [
        {"text": " ".join(["red", "sea"][i % 2] for _ in range(2 + i % 5)), "label": "ab"[i % 2]}
        for i in range(18)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "ddp",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(tiny_model_dir), "head": "classification"},
        "data": {"train": str(tmp_path / "train.jsonl"), "validation_fraction": 0.2},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {
            "epochs": 2,
            "batch_size": 2,
            "lr": 1e-2,
            "precision": "fp32",
            "save_every": 2,
            "sharding": sharding,
        },
        "eval": {"probes": False, "icl_shots": []},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml"), "--nproc", "2"]) == 0
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train"]["steps"] == 8  # 14 training examples, global micro-batch 4, 2 epochs
    assert ckpt.list_checkpoints(run / "checkpoints")[-1].name == "step-000008"
    assert not list(run.glob(".*.tmp"))  # no half-written file from a second writer
