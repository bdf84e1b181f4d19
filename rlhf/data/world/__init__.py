"""The built-in world: a seeded simulation of what InstructGPT needs from outside.

A pretraining corpus, a prompt distribution over task families, simulated labelers who
write demonstrations and rank completions, a held-out labeler pool that judges, and a
deterministic gold judge. Pure Python (no torch). See docs/world.md.
"""
from .candidates import candidates
from .gold import gold_details, gold_prefer, gold_score
from .labelers import Labeler, LabelerPool
from .tasks import FAMILIES, family_of, parse_prompt
from .writer import FILES, write_world

__all__ = ["FAMILIES", "FILES", "Labeler", "LabelerPool", "candidates", "family_of",
           "gold_details", "gold_prefer", "gold_score", "parse_prompt", "write_world"]
