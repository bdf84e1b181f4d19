"""Figure 1 across sizes: every (size, method) judged against the largest size's SFT."""
import json

import pytest
from omegaconf import OmegaConf
from transformers import LlamaConfig

from rlhf.eval.sizes import Figure1Callback, figure1, n_params

PROMPTS = ["p1", "p2", "p3", "p4"]


def right_beats_wrong(prompt, a, b):
    """A symmetric judge, so the order judge_pairs shows the pair in cannot matter."""
    return 0.5 if (a == "right") == (b == "right") else float(a == "right")


def fake_run(root, name, hidden, rows):
    """A pipeline run dir as the eval stage leaves it: eval/samples.jsonl and eval/final/rlhf.json."""
    sft = root / name / "sft" / "final"
    LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(sft)
    (root / name / "eval" / "final").mkdir(parents=True)
    (root / name / "eval" / "final" / "rlhf.json").write_text(json.dumps({"models": {"sft": str(sft)}}))
    lines = [json.dumps({"prompt": p, **{m: r[i] for m, r in rows.items()}}) for i, p in enumerate(PROMPTS)]
    (root / name / "eval" / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return root / name


@pytest.fixture
def runs(tmp_path):
    large = fake_run(tmp_path, "large", 32, {"base": ["wrong"] * 4, "sft": ["right", "wrong"] * 2,
                                             "ppo_ptx": ["right"] * 4})
    small = fake_run(tmp_path, "small", 8, {"base": ["wrong"] * 4, "sft": ["wrong"] * 4,
                                            "ppo_ptx": ["right"] * 4})
    return small, large


def test_every_size_is_judged_against_the_largest_sft(runs, tmp_path):
    small, large = runs
    out = tmp_path / "fig"
    result = figure1([large, small], right_beats_wrong, out)  # given out of order: sorted by size
    assert list(result["sizes"]) == ["small", "large"] and result["reference"] == "large/sft"
    assert result["sizes"]["small"]["params"] == n_params(small / "sft" / "final") < n_params(large / "sft" / "final")
    # against the reference right, wrong, right, wrong: "right" wins 2 ties + 2 wins, "wrong" 2 losses + 2 ties
    assert result["sizes"]["small"]["ppo_ptx"][0] == pytest.approx(0.75)
    assert result["sizes"]["large"]["base"][0] == pytest.approx(0.25)
    assert result["sizes"]["large"]["sft"][0] == pytest.approx(0.5)
    assert result["sizes"]["small"]["sft"][0] == pytest.approx(0.25)
    assert json.loads((out / "figure1.json").read_text()) == json.loads(json.dumps(result))
    assert (out / "figure1.png").stat().st_size > 1000
    assert "| small | " in (out / "figure1.md").read_text()


def test_sizes_evaluated_on_other_prompts_are_refused(runs, tmp_path):
    small, large = runs
    text = (small / "eval" / "samples.jsonl").read_text().replace('"p4"', '"other"')
    (small / "eval" / "samples.jsonl").write_text(text)
    with pytest.raises(ValueError, match="small/eval/samples.jsonl: its prompts differ"):
        figure1([small, large], right_beats_wrong, tmp_path / "fig")


def test_multirun_callback_finds_the_runs_and_uses_the_configured_judge(runs, tmp_path):
    cb = Figure1Callback(runs_dir=str(tmp_path), out_dir=str(tmp_path / "figure1"))
    config = OmegaConf.create({"seed": 0, "judge": {"_target_": "rlhf.feedback.Custom",
                                                    "target": f"{__file__}:right_beats_wrong"}})
    result = cb.on_multirun_end(config)
    assert set(result["sizes"]) == {"small", "large"}
    assert (tmp_path / "figure1" / "figure1.md").is_file()
