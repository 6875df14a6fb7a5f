"""Which GPUs this process may use, and how many worker processes to start on each."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

def gpu_inventory() -> tuple[list[str] | None, str]:
    """The GPU ids this process may use and where that list comes from.

    ``CUDA_VISIBLE_DEVICES`` if set (a scheduler's allocation), else the GPUs nvidia-smi
    lists; None where neither can tell (no variable, no nvidia-smi).
    """
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        ids = [g.strip() for g in declared.split(",") if g.strip() and g.strip() != "-1"]
        return ids, f"CUDA_VISIBLE_DEVICES={declared!r}"
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi is not installed and CUDA_VISIBLE_DEVICES is not set"
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"nvidia-smi -L failed ({exc})"
    ids = [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]
    return ids, "nvidia-smi -L"


def visible_gpus() -> list[str]:
    """GPU ids this process may use (`gpu_inventory`); none where nothing lists any."""
    return gpu_inventory()[0] or []


@dataclass(frozen=True)
class WorkerPlan:
    """Which worker processes to start: ``per_gpu`` on each GPU of ``gpus`` (one on a CPU host).

    ``note`` is a line for the user about a setting that did not apply as given.
    """

    gpus: tuple[str, ...]
    per_gpu: int = 1
    note: str | None = None

    @property
    def n_workers(self) -> int:
        return max(1, len(self.gpus) * self.per_gpu)

    def environments(self) -> list[dict[str, str]]:
        """The environment of each worker: its GPU, and memory shared with its neighbours."""
        if not self.gpus:
            return [{}]
        out = []
        for gpu in self.gpus:
            for _ in range(self.per_gpu):
                env = {"CUDA_VISIBLE_DEVICES": gpu}
                if self.per_gpu > 1:
                    # several processes on one GPU: none may take all of its memory up front
                    env.update({
                        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                        "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / self.per_gpu:.3f}",
                        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                    })
                out.append(env)
        return out


def plan_workers(gpus: str | None, per_gpu: int) -> WorkerPlan:
    """Return the plan for ``--gpus`` (``"0,1"``, or None for every visible GPU).

    The GPUs chosen must be among those this process may use (`gpu_inventory`): a GPU outside
    a scheduler's ``CUDA_VISIBLE_DEVICES`` belongs to someone else, and on a host without one
    the run would silently train on the CPU. Where nothing lists the GPUs, the plan says so in
    its ``note`` and trusts ``--gpus``.

    Raises:
        ValueError: ``per_gpu`` < 1, a GPU id that is not an integer, or a GPU not visible here.
    """
    if per_gpu < 1:
        raise ValueError(f"'--workers-per-gpu'={per_gpu} is out of range; expected an integer >= 1.")
    visible, source = gpu_inventory()
    if gpus is None:
        note = None
        if not visible and per_gpu > 1:
            note = (f"no GPU visible ({source}): one worker on the CPU; --workers-per-gpu "
                    f"counts workers per GPU")
        return WorkerPlan(tuple(visible or ()), per_gpu, note)
    chosen = tuple(g.strip() for g in gpus.split(",") if g.strip())
    bad = [g for g in chosen if not g.isdigit()]
    if bad or not chosen:
        what = f"{bad[0]!r} is not a GPU index" if bad else "no GPU index"
        raise ValueError(f"'--gpus'={gpus!r}: {what}; expected e.g. 0,1,3.")
    if visible is None:
        return WorkerPlan(chosen, per_gpu, f"cannot check --gpus {gpus} ({source}): using it as given")
    missing = [g for g in chosen if g not in visible]
    if missing:
        allowed = (f"the GPUs visible here are {','.join(visible)} ({source})" if visible else
                   f"no GPU is visible here ({source}); leave out --gpus to run one worker "
                   f"on the CPU")
        raise ValueError(f"'--gpus'={gpus!r}: GPU {missing[0]} is not visible here; {allowed}.")
    return WorkerPlan(chosen, per_gpu)
