"""``python tests/scale/fsdp1_on_cpu.py <rlhf-train overrides> strategy=fsdp``: ``strategy=fsdp``
(torch FSDP1) on CPU processes, so its code runs in a test on a machine without GPUs.

Two CPU-only workarounds, both unneeded on GPUs: torch FSDP1 gets ``device_id=cpu`` (Lightning
passes the device index, None on a CPU, and FSDP1 then asks for an accelerator), and Lightning's
full-state-dict context keeps tensors where they are (FSDP1 segfaults offloading CPU tensors to
the CPU; on GPUs that offload is the normal path).
"""
import lightning.fabric.strategies.fsdp as fabric_fsdp
import lightning.pytorch.strategies.fsdp as pytorch_fsdp
import torch
import torch.distributed.fsdp as fsdp
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp.api import FullOptimStateDictConfig


class CPUFSDP(fsdp.FullyShardedDataParallel):
    def __init__(self, *args, device_id=None, **kwargs):
        super().__init__(*args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)


def full_state_dict_in_place(module, world_size, rank0_only=True):
    return fsdp.FullyShardedDataParallel.state_dict_type(
        module=module, state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=False),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=False))


fsdp.FullyShardedDataParallel = CPUFSDP
fabric_fsdp._get_full_state_dict_context = pytorch_fsdp._get_full_state_dict_context = full_state_dict_in_place

if __name__ == "__main__":
    from rlhf.train import main

    main()
