"""The RM stage end to end through the Hydra config: tiny SFT -> RM final/ -> plain transformers."""
from __future__ import annotations

import json
import random

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import WORDS, make_config
from rlhf.data.formats import DataError, read_jsonl, write_jsonl
from rlhf.data.lm import Counts, encode_demonstrations
from rlhf.handoff import read_provenance
from rlhf.models.reward import load_reward_model, normalization, score_ids
from rlhf.score import main as score_main
from rlhf.train import train


def graded(rng: random.Random) -> dict:
    """reverse 3 words; K = 2..4 completions ranked by how many words are foreign (0 = best)."""
    w = rng.sample(WORDS, 3)
    foreign, where, k = rng.sample([x for x in WORDS if x not in w], 3), rng.sample(range(3), 3), rng.randint(2, 4)
    comps = []
    for n in range(k):
        r = list(reversed(w))
        for j in where[:n]:
            r[j] = foreign[j]
        comps.append(" ".join(r))
    order = rng.sample(range(k), k)  # shuffle the completions; the ranking moves with them
    return {"prompt": "reverse: " + " ".join(w), "completions": [comps[i] for i in order],
            "ranking": sorted(range(k), key=lambda i: order[i])}


@pytest.fixture(scope="module")
def base(toy_data, tmp_path_factory) -> list[str]:
    """Overrides for the toy data plus comparisons, and a tiny SFT model as ``init``."""
    root, rng = tmp_path_factory.mktemp("rm"), random.Random(1)
    data = [graded(rng) for _ in range(384)]
    files = {**toy_data, "comparisons_train": write_jsonl(root / "c_train.jsonl", data[:320]),
             "comparisons_val": write_jsonl(root / "c_val.jsonl", data[320:])}
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in files.items()), f"output_root={root}",
          "run_name=t", "model.vocab_size=300", "trainer.enable_progress_bar=false", "stage.batch_size=16"]
    train(make_config([*ov, "stage=sft", "debug=fast"]))
    return [*ov, "stage=rm", f"init={root}/t/sft/final", "stage.optim.lr=1e-3"]


class Probe(pl.Callback):
    """Parameters before training, and backbone rows per training forward vs prompts and completions per batch."""

    def on_train_start(self, trainer, module):
        self.before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        self.rows, self.prompts, self.completions = [], [], []
        self.hook = module.model.base_model.register_forward_hook(
            lambda m, args, kw, out: self.rows.append(kw["input_ids"].shape[0]) if m.training else None,
            with_kwargs=True)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.completions.append(int(batch["mask"].sum()))
        self.prompts.append(batch["mask"].shape[0])

    def on_train_end(self, trainer, module):
        self.hook.remove()


@pytest.fixture(scope="module")
def rm(base):
    probe = Probe()
    metrics, objs = train(make_config([*base, "debug=fast", "trainer.limit_train_batches=4", "run_name=rm"]), callbacks=[probe])
    return objs["trainer"].default_root_dir + "/final", metrics, objs, probe


def test_rm_trains_every_parameter_and_encodes_each_prompt_once_with_its_completions(rm):
    _, metrics, objs, probe = rm
    assert [n for n, p in objs["module"].named_parameters() if torch.equal(p, probe.before[n])] == []
    assert len(probe.rows) == 4  # one backbone pass per batch
    # each prompt once, its 2-4 completions beside it; short groups share a row
    assert all(r < p for r, p in zip(probe.rows, probe.prompts)) and min(probe.completions) > max(probe.prompts)
    assert {"val/loss", "val/accuracy", "val/margin", "val/reward_mean", "val/reward_std",
            "train/accuracy_epoch"} <= set(metrics)


def test_final_is_a_plain_transformers_sequence_scorer_with_demonstrations_at_zero(rm, toy_data):
    final = rm[0]
    info = read_provenance(final)
    norm = info["normalization"]
    assert info["stage"] == "rm" and norm["bias"] == pytest.approx(-norm["raw_mean"]) and norm["gain"] == 1.0
    rm_model, tok = load_reward_model(final), AutoTokenizer.from_pretrained(final)
    assert normalization(rm_model) == (1.0, pytest.approx(norm["bias"]))
    demos = encode_demonstrations(read_jsonl(toy_data["sft_val"], "demonstration"), tok, info["template"],
                                  96, 48, Counts())
    rows = [d["input_ids"] for d in demos]
    assert abs(score_ids(rm_model, rows, tok.pad_token_id).mean().item()) < 1e-4
    plain = AutoModelForSequenceClassification.from_pretrained(final).eval()
    with torch.no_grad():
        logit = plain(input_ids=torch.tensor(rows[:1])).logits[0, 0]
    assert logit.item() == pytest.approx(score_ids(rm_model, rows[:1], tok.pad_token_id, raw=True).item(), abs=1e-5)


def test_score_command(rm, tmp_path):
    final = rm[0]
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "reverse: cat dog sun", "response": r, "id": i}
                                              for i, r in enumerate(["sun dog cat", "moon king lamp", "cat"])])
    score_main([final, str(src), str(tmp_path / "out.jsonl"), "--batch-size", "2"])
    out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    gain, bias = normalization(load_reward_model(final))
    assert [r["id"] for r in out] == [0, 1, 2]
    assert all(r["reward"] == pytest.approx(gain * r["raw_reward"] + bias) for r in out)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing key 'response'"):
        score_main([final, str(tmp_path / "bad.jsonl"), str(tmp_path / "o.jsonl")])


def test_rm_without_init_says_what_to_set(base):
    with pytest.raises(ValueError, match="init="):
        train(make_config([*[o for o in base if not o.startswith("init=")], "run_name=noinit"]))


def test_rm_learns_the_ranking_above_chance(base):
    """Held-out pairwise accuracy on the graded reversal task after a few epochs (chance 0.5)."""
    metrics, _ = train(make_config([*base, "run_name=learn", "stage.epochs=6"]))
    assert metrics["val/accuracy"] > 0.65, metrics  # seeds 0-3 gave 0.71-0.87; ~200 held-out pairs
