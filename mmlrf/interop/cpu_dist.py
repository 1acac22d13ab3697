"""Multi-process training on CPU-only machines with mmengine 0.10.x (gloo backend).

mmengine's launcher assumes a GPU in two places; both are fixed here, both no-ops with CUDA:

* ``mmengine.dist.utils._init_dist_pytorch`` calls ``torch.cuda.set_device`` unconditionally,
  which crashes on a CPU-only torch. :func:`apply` wraps it: without CUDA (and without another
  accelerator mmengine knows) it calls ``init_process_group`` directly, and rejects the
  GPU-only ``nccl`` backend with a ValueError naming ``env_cfg.dist_cfg.backend``.
* The Runner passes ``device_ids=[LOCAL_RANK]`` to DDP, which DDP refuses for CPU modules.
  ``model_wrapper_cfg=dict(type='CPUAwareDistributedDataParallel')`` drops ``device_ids`` when
  the module lives on the CPU and is mmengine's ``MMDistributedDataParallel`` otherwise.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.dist import utils as dist_utils
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch import nn


def _accelerator_present() -> bool:
    return torch.cuda.is_available() or dist_utils.is_mlu_available() or \
        dist_utils.is_npu_available() or dist_utils.is_musa_available()


def apply() -> None:
    """Make ``init_dist('pytorch', backend='gloo')`` work without CUDA (idempotent)."""
    original = dist_utils._init_dist_pytorch
    if getattr(original, 'mmlrf_cpu_aware', False):
        return

    @functools.wraps(original)
    def init_dist_pytorch(backend: str = 'nccl', init_backend: str = 'torch',
                          **kwargs: Any) -> None:
        if _accelerator_present():
            return original(backend, init_backend=init_backend, **kwargs)
        if backend == 'nccl':
            raise ValueError("env_cfg.dist_cfg.backend='nccl' needs CUDA GPUs; on CPU use "
                             "--cfg-options env_cfg.dist_cfg.backend=gloo (allowed: 'gloo', 'mpi')")
        if init_backend != 'torch':
            raise ValueError(f"init_backend must be 'torch' without an accelerator, "
                             f'got {init_backend!r}')
        torch_dist.init_process_group(backend=backend, rank=int(os.environ['RANK']),
                                      world_size=int(os.environ['WORLD_SIZE']), **kwargs)

    init_dist_pytorch.mmlrf_cpu_aware = True  # type: ignore[attr-defined]
    dist_utils._init_dist_pytorch = init_dist_pytorch


@MODEL_WRAPPERS.register_module()
class CPUAwareDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also wraps CPU modules (``device_ids`` dropped there).

    Args:
        module (nn.Module): the model.
        device_ids (list[int] | None): as for DDP; ignored when ``module`` is on the CPU.
        **kwargs: passed to ``MMDistributedDataParallel``.
    """

    def __init__(self, module: nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


apply()
