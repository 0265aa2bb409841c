"""One rank of test_deepspeed.py: DeepSpeed's client-optimizer path (ZeRO stage 0, fp32) with
MLorcAdamW on the CPU with gloo. Run as ``python ds_worker.py RANK WORLD STORE_FILE OUT_DIR``.

DeepSpeed hands the client optimizer the model's own parameters at stage 0 and all-reduces
(averages) the gradients before ``optimizer.step()``: every rank keeps the whole, replicated
MLorc state, as under DDP. (At ZeRO stages 1-3 the client optimizer only sees flat 1-d
partitions; see the README.)
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import dist_worker as W  # noqa: E402

STEPS = 4


def main() -> None:
    rank, world, store_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group(
        "gloo", store=dist.FileStore(store_file, world), rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    import deepspeed

    model = W.lm_model()
    opt = W.lm_opt(model.parameters())
    config = {
        "train_micro_batch_size_per_gpu": W.BATCH // world,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 0},
    }
    engine, ds_opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    per = W.BATCH // world
    history, losses = [], []
    for step in range(STEPS):
        tokens = W.lm_batch(step)[rank * per : (rank + 1) * per]
        loss = W.lm_loss(engine, tokens)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        history.append({n: p.detach().clone() for n, p in model.named_parameters()})
    state_keys = {n: sorted(opt.state[p]) for n, p in model.named_parameters()}
    torch.save(
        {"history": history, "losses": losses, "state_keys": state_keys, "wrapped": type(ds_opt).__name__},
        out_dir / f"rank{rank}.pt",
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
