"""Run by test_scale_distributed.py under torchrun, 2 CPU processes: generation from an FSDP2-sharded
policy inside ``rlhf.distributed.gathered`` gives the unsharded model's tokens and all-gathers
each FSDP unit once per rollout; without it, every block is gathered again at every token."""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.fsdp._fully_shard import _fsdp_param_group
from transformers import AutoModelForCausalLM, GenerationConfig

from rlhf.distributed import gathered, shard_model

dist.init_process_group("gloo")
torch.manual_seed(0)
policy = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).train()
reference = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
shard_model(policy, init_device_mesh("cpu", (dist.get_world_size(),)))
ids = torch.randint(3, 100, (4, 6))
gen = GenerationConfig(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=0, eos_token_id=None)

calls = []
real = _fsdp_param_group.foreach_all_gather
_fsdp_param_group.foreach_all_gather = lambda *a, **k: calls.append(1) or real(*a, **k)
with torch.no_grad():
    with gathered(policy):
        once = policy.generate(input_ids=ids, generation_config=gen)
    n_once, calls[:] = len(calls), []
    resharded = all(isinstance(p, DTensor) for p in policy.parameters())
    every = policy.generate(input_ids=ids, generation_config=gen)
    n_every = len(calls)
    expected = reference.generate(input_ids=ids, generation_config=gen)
units = sum(1 for m in policy.modules() if type(m).__name__.startswith("FSDP"))
if dist.get_rank() == 0:
    json.dump({"units": units, "all_gathers_gathered": n_once, "all_gathers_plain": n_every,
               "same_tokens": bool(torch.equal(once, expected) and torch.equal(every, expected)),
               "training_after": policy.training,
               "resharded": resharded},
              open(os.environ["OUT_JSON"], "w"))
dist.destroy_process_group()
