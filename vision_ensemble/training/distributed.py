"""Runs over several processes and machines: refuse a launch that would silently be several separate runs, find
out whether the nodes share the run folder (a shared filesystem) or each has its own (node-local disks), and
write checkpoints and `best/` accordingly: once per run on a shared folder, once per node on local disks
(Accelerate's `ProjectConfiguration.save_on_each_node`), so that every node can resume from its own disk."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from accelerate.utils import broadcast_object_list, gather_object


class DistributedError(RuntimeError):
    """A launch or a folder layout that cannot work, said in one line."""


def cpu_threads(requested: int | None) -> int:
    """Threads a CPU training process computes with: `requested`, else the cores it may use shared among the
    machine's processes.  `accelerate launch` without `--cpu` sets OMP_NUM_THREADS=1 for every process, which
    left one of a 2-core machine's cores idle (airbench_s: 200 img/s against 400, BENCHMARKS.md)."""
    if requested:
        return requested
    return max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def check_launch(accelerator) -> None:
    """Stop when the launcher meant several processes but this one trains alone (it would write the same run
    folder as its twins). `accelerate launch --cpu --num_processes N` starts one plain process per machine
    (its CPU path needs mpirun); torchrun's WORLD_SIZE says how many it started."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    simple_launcher_asked_for_more = "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ and not any(
        name in os.environ for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"))
    if accelerator.num_processes == 1 and (world_size > 1 or simple_launcher_asked_for_more):
        raise DistributedError(
            "launched for several processes or machines, but this process trains alone: `accelerate launch --cpu` "
            "starts one process per machine. Launch with `accelerate launch --multi_gpu --num_processes N` (gloo "
            "on CPU-only machines too) or `torchrun --nproc_per_node N`, adding --num_machines/--machine_rank/"
            "--main_process_ip/--main_process_port (torchrun: --nnodes/--node_rank/--master_addr) for several machines")


def choose_layout(accelerator, output_dir: Path) -> bool:
    """Create the run folder on every node and set `save_on_each_node`: False when all nodes see the global main
    process's folder (shared filesystem), True when none of the others do (node-local disks). Returns whether
    the folder is shared."""
    output_dir.mkdir(parents=True, exist_ok=True)  # every process: the local main may not be the first here
    if accelerator.num_processes == 1:
        return True
    probe = output_dir / ".node-probe"
    token = [secrets.token_hex(8) if accelerator.is_main_process else None]
    broadcast_object_list(token)
    if accelerator.is_main_process:
        probe.write_text(token[0])
    accelerator.wait_for_everyone()
    sees = probe.exists() and probe.read_text() == token[0]
    seen = gather_object([(accelerator.process_index, accelerator.is_local_main_process, sees)])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink()
    others = [s for rank, local_main, s in seen if local_main and rank != 0]
    if others and any(others) and not all(others):
        blind = [rank for rank, local_main, s in seen if local_main and not s]
        raise DistributedError(
            f"{output_dir} is shared by some nodes and not by others (the nodes of process(es) {blind} do not see "
            "the main process's files): give every node the same shared folder, or each its own local one")
    shared = all(s for _, _, s in seen)
    accelerator.project_configuration.save_on_each_node = not shared
    return shared


def is_writer(accelerator) -> bool:
    """Whether this process writes checkpoints and `best/`: the main process, or each node's when every node
    keeps its own copy."""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "checkpoints").glob("epoch_[0-9][0-9][0-9]"))


def save_checkpoint(accelerator, output_dir: Path, epoch: int, keep: int = 2) -> Path:
    """save_state into a '.partial' folder, then rename: an interrupted write never replaces a good checkpoint."""
    final = output_dir / "checkpoints" / f"epoch_{epoch:03d}"
    partial = final.with_name(final.name + ".partial")
    writer = is_writer(accelerator)
    if writer:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)  # every process writes its RNG state into it
    accelerator.wait_for_everyone()
    if writer:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resume_dir(accelerator, output_dir: Path, resume: str) -> Path:
    """The checkpoint `--resume` names ('latest' or a folder), the same one on every node, or one clear error
    raised on every process (an error on one process alone would leave the others waiting)."""
    found = checkpoint_dirs(output_dir)
    path = (found[-1] if found else None) if resume == "latest" else Path(resume)
    mine = path.name if path is not None and path.is_dir() else None
    names = gather_object([mine])
    if None in names:
        missing = sorted({rank for rank, name in enumerate(names) if name is None})
        where = "" if accelerator.num_processes == 1 else f" on the node(s) of process(es) {missing}"
        raise DistributedError(f"--resume {resume}: no checkpoint found under {output_dir / 'checkpoints'}{where}")
    if len(set(names)) > 1:
        raise DistributedError(f"--resume {resume}: the nodes' latest checkpoints differ "
                               f"({', '.join(sorted(set(names)))}): pass --resume with the folder of one they all have")
    return path
