"""`dtrain env`: what a bug report needs - versions, GPUs, and the distributed environment in effect.

Package versions come from installed metadata, so deepspeed, transformers and wandb are not imported
(importing deepspeed alone can take seconds and print warnings). Secrets in variables are masked.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from dtrain.redact import redact_env

PACKAGES = ("dtrain", "torch", "deepspeed", "transformers", "accelerate", "lightning", "wandb", "tensorboard",
            "onnx", "onnxruntime", "numpy", "safetensors")
ENV_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_", "TORCH_", "NCCL_", "GLOO_", "CUDA_", "NVIDIA_", "OMP_NUM_THREADS",
                "SLURM_", "WANDB_", "HF_", "PYTORCH_")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect(env: dict[str, str] | None = None) -> dict:
    import torch

    env = dict(os.environ if env is None else env)
    info: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "distributed": {"available": torch.distributed.is_available(),
                        "nccl": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
                        "gloo": torch.distributed.is_available() and torch.distributed.is_gloo_available()},
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as exc:  # a build without NCCL
            info["nccl"] = f"unavailable ({exc})"
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                                 "capability": f"{p.major}.{p.minor}"})
    info["env"] = redact_env({k: v for k, v in sorted(env.items()) if k.startswith(ENV_PREFIXES)})
    return info


def render(info: dict) -> str:
    lines = [f"python       {info['python']} ({info['platform']}, {info['cpus']} CPUs)"]
    for name, version in info["packages"].items():
        lines.append(f"{name:<12} {version}")
    lines.append(f"CUDA (torch) {info['torch_cuda'] or 'none (CPU build)'}; available: {info['cuda_available']}")
    if "nccl" in info:
        lines.append(f"NCCL         {info['nccl']}; cuDNN {info.get('cudnn')}")
    d = info["distributed"]
    lines.append(f"backends     nccl={d['nccl']} gloo={d['gloo']}")
    if info["gpus"]:
        for g in info["gpus"]:
            lines.append(f"GPU {g['index']}        {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}")
    else:
        lines.append("GPUs         none visible")
    lines.append("environment" + ("  (no distributed/CUDA/Slurm variables set)" if not info["env"] else ":"))
    lines += [f"  {k}={v}" for k, v in info["env"].items()]
    return "\n".join(lines)
