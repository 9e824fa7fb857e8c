"""Many processes, one run: torchrun's environment -> DistributedDataParallel; ``--devices N`` launches torchrun.

We do not write a launcher or a rendezvous: ``torch.distributed.run`` (torchrun) starts the processes, restarts the
group when one dies (``--max-restarts``) and joins machines through its rendezvous. What this module adds:

- ``from_env``: who this process is (rank, world size, restart count), refusing a half-set torchrun environment
  with the names of the missing variables (a hand-written launch script is the usual cause);
- ``setup``: the process group (NCCL on CUDA, gloo on CPU) and this process's device;
- ``launch``: ``pocketvision train ... --devices N`` re-runs the same command line under torchrun on this machine;
- ``agree`` / ``check_in_sync``: rank 0 decides (early stop) and the weights are proven identical at the end.

The engine shards every epoch's sample order over the processes (``loader.EpochSampler``) and splits the batch:
``--batch-size`` stays the *global* batch, so N processes take the same optimiser steps on the same images as one
process (the recipe's learning rate still applies) and the result equals a one-process run within noise (BatchNorm
sees per-process batches). Rank 0 validates, logs, writes checkpoints and the bundle; a restarted group resumes
from the run folder's last checkpoint.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PocketVisionError

# What torchrun sets for every process; env:// initialisation needs all of them.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Any of these means "launched as one of several processes" (MASTER_* alone is often set cluster-wide).
_MARKERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Set by ``launch``: each process writes its one-line error here instead of printing it, and ``launch`` prints
# each distinct message once (N processes reading the same bad folder would print the same line N times).
ERROR_DIR_ENV = "POCKETVISION_ERROR_DIR"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    restart: int = 0  # TORCHELASTIC_RESTART_COUNT: > 0 after torchrun restarted the group
    run_id: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env(environ=None) -> Dist:
    env = os.environ if environ is None else environ
    if not any(v in env for v in _MARKERS):
        return Dist()
    missing = [v for v in TORCHRUN_VARS if v not in env]
    if missing:
        present = [v for v in TORCHRUN_VARS if v in env]
        raise PocketVisionError(f"torchrun environment incomplete: {', '.join(present)} set but {', '.join(missing)} "
                                f"missing. Launch with `torchrun --nproc-per-node N -m pocketvision train ...` or "
                                f"`pocketvision train ... --devices N`, or unset {', '.join(present)} for one process.")
    values = {}
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT"):
        try:
            values[v] = int(env.get(v, "0"))
        except ValueError:
            raise PocketVisionError(f"torchrun environment: {v}={env[v]!r} is not an integer.") from None
    d = Dist(rank=values["RANK"], world=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"],
             local_world=values["LOCAL_WORLD_SIZE"], restart=values["TORCHELASTIC_RESTART_COUNT"],
             run_id=env.get("TORCHELASTIC_RUN_ID", f"{env['MASTER_ADDR']}-{env['MASTER_PORT']}"))
    if not (0 <= d.rank < d.world and 0 <= d.local_rank < d.local_world <= d.world):
        raise PocketVisionError(f"torchrun environment: RANK={d.rank}, LOCAL_RANK={d.local_rank} do not fit "
                                f"WORLD_SIZE={d.world}, LOCAL_WORLD_SIZE={d.local_world}.")
    return d


def available(device: str) -> tuple[int, str]:
    """-> (how many processes this machine can run for ``device``, what they are)."""
    import torch
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "CUDA GPUs"
    return os.cpu_count() or 1, "CPU cores"


def check_devices(devices: int, dist: Dist) -> None:
    """In the training process: ``--devices`` must be what torchrun started, never silently ignored."""
    if dist.active:
        if devices not in (1, dist.local_world):
            raise PocketVisionError(f"--devices {devices}, but torchrun started {dist.local_world} processes on this "
                                    f"machine: leave --devices out under torchrun or match --nproc-per-node.")
    elif devices > 1:
        raise PocketVisionError(f"devices={devices} needs one process per device: run `pocketvision train ... "
                                f"--devices {devices}` (it launches them) or start this script with torchrun.")


def check_available(devices: int, device: str) -> None:
    n, what = available(device)
    if devices > n:
        raise PocketVisionError(f"--devices {devices}: this machine has {n} {what}. Use --devices {n} or fewer.")


def run_dir_for(run_dir, name: str, dist: Dist) -> Path:
    """The run folder: given, else ``runs/NAME-TIMESTAMP``; under torchrun ``runs/train-RUN_ID`` (the same on every
    process and after a restart, where a timestamp would differ)."""
    import time
    if run_dir:
        return Path(run_dir)
    if dist.active:
        return Path("runs") / f"train-{dist.run_id}"
    return Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")


def setup(dist: Dist, device: str):
    """Join the process group (once) -> this process's torch device."""
    import torch
    import torch.distributed as td
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available() or dist.local_rank >= torch.cuda.device_count():
            raise PocketVisionError(f"process {dist.rank} (LOCAL_RANK {dist.local_rank}) has no CUDA device: this "
                                    f"machine has {torch.cuda.device_count()}; use fewer processes per node.")
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo", store=_store(dist), rank=dist.rank, world_size=dist.world)
    return dev


def _store(dist: Dist):
    """torchrun's key-value store, under a prefix per restart. torchrun keeps one store across restarts (torch 2.13):
    with plain env:// a restarted process can read the dead group's addresses and fail to connect (measured: gloo
    'Connection refused' whenever rank 0 comes up more than ~4 s after the others)."""
    from datetime import timedelta

    from torch.distributed import PrefixStore, TCPStore
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts it
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), dist.world,
                     is_master=not agent and dist.rank == 0, timeout=timedelta(minutes=30), multi_tenant=True)
    return PrefixStore(f"pocketvision/attempt_{dist.restart}", store)


def wrap(module, device):
    """DistributedDataParallel around what trains. Buffers (BatchNorm statistics) follow rank 0's at each step."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def teardown() -> None:
    import torch.distributed as td
    if td.is_initialized():
        td.destroy_process_group()


def agree(value, dist: Dist):
    """Rank 0's ``value`` on every rank; also a barrier (rank 0 has finished what came before, e.g. a checkpoint)."""
    if not dist.active:
        return value
    import torch.distributed as td
    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


def check_in_sync(module, dist: Dist) -> None:
    """Every process must end with the same weights (DDP averages gradients; a module that changes parameters
    outside backward, or a rank that skipped a step, breaks that silently). One small all-reduce proves it."""
    if not dist.active:
        return
    import torch
    import torch.distributed as td
    params = [p for p in module.parameters()]
    if not params:
        return
    sums = torch.stack([p.detach().double().sum() for p in params]).cpu()
    if td.get_backend() == "nccl":
        sums = sums.cuda()
    hi, lo = sums.clone(), sums.clone()
    td.all_reduce(hi, op=td.ReduceOp.MAX)
    td.all_reduce(lo, op=td.ReduceOp.MIN)
    gap = float((hi - lo).abs().max())
    if gap > 1e-6 * max(1.0, float(hi.abs().max())):
        raise PocketVisionError(f"the {dist.world} training processes ended with different weights (largest "
                                f"per-tensor sum gap {gap:.3g}); this is a bug, please report it with the command.")


def launch(argv: list[str], devices: int, run_dir: Path, max_restarts: int) -> int:
    """Run ``pocketvision <argv>`` as ``devices`` processes on this machine with torchrun's elastic launcher
    (in this process, as ``torchrun --standalone`` does) -> exit code.

    The restarts are ours, not the agent's, because only here can a bad input be told from a crash: a process
    that exits with our error code (2: a one-line message it printed) or 130 (Ctrl-C) ends the run at once; a
    process that died (a signal, an out-of-memory kill) restarts all of them from the last checkpoint in
    ``run_dir`` (fixed here so that every attempt finds it), at most ``max_restarts`` times."""
    import logging
    import tempfile
    # The agent's own log lines (and its traceback) would bury the one line that says what happened.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun would set 1 thread per process with a banner; give each process its share of the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    args = [*argv, "--run-dir", str(run_dir)]
    errors = Path(tempfile.mkdtemp(prefix="pocketvision-errors-"))
    os.environ[ERROR_DIR_ENV] = str(errors)
    try:
        return _attempts(args, argv, devices, run_dir, max_restarts, errors)
    finally:
        os.environ.pop(ERROR_DIR_ENV, None)
        for f in errors.glob("*"):
            f.unlink()
        errors.rmdir()


def _attempts(args: list[str], argv: list[str], devices: int, run_dir: Path, max_restarts: int,
              errors: Path) -> int:
    import signal
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .checkpoint import CKPT_META
    for attempt in range(max_restarts + 1):
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
                              rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
        try:
            elastic_launch(config, sys.executable)("-m", "pocketvision", *args)
            return 0
        except ChildFailedError as e:
            codes = {rank: f.exitcode for rank, f in e.failures.items()}
        said = sorted({f.read_text().strip() for f in errors.glob("rank*.txt")})
        for f in errors.glob("*"):
            f.unlink()
        for code in (2, 130):  # a process reported a bad input (or was interrupted): say why, once
            if code in codes.values():
                for line in said:
                    print(f"error: {line}", file=sys.stderr)
                return code

        def what(c: int) -> str:
            return f"was killed by {signal.Signals(-c).name}" if c < 0 and -c in signal.valid_signals() else \
                f"exited with code {c}"
        died = "; ".join(f"process {r} {what(c)}" for r, c in sorted(codes.items()))
        if attempt < max_restarts and (run_dir / CKPT_META).exists():
            print(f"{died}: restarting the {devices} processes from the last checkpoint in {run_dir} "
                  f"(restart {attempt + 1} of {max_restarts})", file=sys.stderr)
            args = [*argv, "--run-dir", str(run_dir), "--resume", str(run_dir)]
            continue
        raise PocketVisionError(f"{died} (see its messages above); "
                                + (f"resume with --resume {run_dir}" if (run_dir / CKPT_META).exists()
                                   else "no checkpoint was written yet"))
    return 1  # not reached


def report_error(message: str) -> bool:
    """In a process that ``launch`` started: hand the error line to it (printed once for all) -> True."""
    where = os.environ.get(ERROR_DIR_ENV)
    if not where or "RANK" not in os.environ:
        return False
    try:
        (Path(where) / f"rank{int(os.environ['RANK'])}.txt").write_text(message)
    except OSError:
        return False
    return True


def local_batch(batch_size: int, shard: tuple[int, int]) -> int:
    """The global ``batch_size`` split over the ``shard``'s processes (each takes the same share)."""
    world = shard[1]
    if batch_size % world:
        raise PocketVisionError(f"--batch-size {batch_size} does not split evenly over {world} processes: use a "
                                f"multiple of {world} (it stays the global batch size).")
    return batch_size // world
