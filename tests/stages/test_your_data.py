"""The data users have goes in as it is: TRL's formats, standard and conversational, as parquet
datasets and as JSONL, through SFT, RM and PPO on a tiny Llama whose tokenizer has a chat template."""
from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import datasets
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import WORDS, make_config
from rlhf.data.comparisons import ComparisonDataModule
from rlhf.data.formats import DataError, Source, read_jsonl, write_jsonl
from rlhf.data.lm import IGNORE, LMDataModule
from rlhf.data.prompts import PromptDataModule
from rlhf.models import generate
from rlhf.models.reward import load_reward_model, set_normalization
from rlhf.models.tokenizer import train_bpe_tokenizer
from rlhf.pipeline import run_pipeline
from rlhf.train import CONF_DIR, train

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
FORMATS = ("text", "prompt_completion", "preference", "implicit", "ranked", "prompt_only")
STAGE_FORMATS = {  # what each stage can use: SFT a completion or a text, the RM a ranking, PPO a prompt
    "sft": ("text", "prompt_completion", "preference", "implicit", "ranked"),
    "rm": ("preference", "implicit", "ranked"),
    "ppo": ("text", "prompt_completion", "preference", "implicit", "ranked", "prompt_only"),  # text: messages only
}
PPO_FAST = ["stage.batch_size=8", "stage.minibatch_size=4", "stage.max_new_tokens=6", "stage.optim.warmup_iterations=0",
            "stage.eval_every=0", "trainer.max_steps=2", "stage.log_samples_every=1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only thrashes on 2 busy cores
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama and its tokenizer with a chat template (``policy``), and an RM built from it."""
    d = tmp_path_factory.mktemp("chat")
    rng = random.Random(0)
    tok = train_bpe_tokenizer([" ".join(rng.sample(WORDS, 5)) + " reverse: <|user|><|assistant|><|end|>"
                               for _ in range(400)], vocab_size=300)
    tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(d / "policy")
    tok.save_pretrained(d / "policy")
    rm = load_reward_model(str(d / "policy"), fresh_head=True)
    set_normalization(rm, 1.0, 0.0)
    rm.save_pretrained(d / "rm")
    tok.save_pretrained(d / "rm")
    return {"policy": d / "policy", "rm": d / "rm"}


def _example(rng: random.Random, fmt: str, conversational: bool) -> dict:
    words = rng.sample(WORDS, 3)
    prompt, good, bad = "reverse: " + " ".join(words), " ".join(reversed(words)), " ".join(words)
    other = " ".join(rng.sample(words, 3)) if len(set(words)) == 3 else bad
    other = other if other not in (good, bad) else " ".join([words[1], words[0], words[2]])
    user, said = [{"role": "user", "content": prompt}], (lambda t: [{"role": "assistant", "content": t}])
    if fmt == "text":
        return {"messages": user + said(good)} if conversational else {"text": f"{prompt} gives {good}."}
    if fmt == "prompt_completion":
        return {"prompt": user, "completion": said(good)} if conversational else {"prompt": prompt, "completion": good}
    if fmt == "preference":
        return ({"prompt": user, "chosen": said(good), "rejected": said(bad)} if conversational
                else {"prompt": prompt, "chosen": good, "rejected": bad})
    if fmt == "implicit":  # the prompt is the shared beginning (Anthropic HH's shape)
        return ({"chosen": user + said(good), "rejected": user + said(bad)} if conversational
                else {"chosen": f"User: {prompt}\nAssistant: {good}", "rejected": f"User: {prompt}\nAssistant: {bad}"})
    if fmt == "ranked":
        completions = [bad, other, good]
        return {"prompt": user if conversational else prompt, "ranking": [2, 1, 0],
                "completions": [said(c) for c in completions] if conversational else completions}
    return {"prompt": user if conversational else prompt}


def write_dataset(d: Path, fmt: str, conversational: bool, kind: str, n: int, seed: int) -> Path:
    """``n`` examples of ``fmt`` as parquet (``kind="parquet"``) or JSONL."""
    rng = random.Random(seed)
    rows = [_example(rng, fmt, conversational) for _ in range(n)]
    name = f"{fmt}_{'conv' if conversational else 'std'}_{seed}"
    if kind == "jsonl":
        return write_jsonl(d / f"{name}.jsonl", rows)
    datasets.Dataset.from_list(rows).to_parquet(str(d / f"{name}.parquet"))
    return d / f"{name}.parquet"


def stage_overrides(stage: str, chat: dict, train_file: Path, val_file: Path, out: Path) -> list[str]:
    base = ["data=files", f"output_root={out}", "run_name=t", "trainer.enable_progress_bar=false", "debug=fast",
            f"stage={stage}", f"init={chat['policy']}", "stage.batch_size=8"]
    if stage == "sft":
        return [*base, f"data.files.sft_train={train_file}", f"data.files.sft_val={val_file}"]
    if stage == "rm":
        return [*base, f"data.files.comparisons_train={train_file}", f"data.files.comparisons_val={val_file}",
                "stage.normalize_data=null"]
    return [*base, f"data.files.prompts_ppo={train_file}", f"stage.reward_model={chat['rm']}", *PPO_FAST]


def pipeline(overrides: list[str]) -> None:
    """``rlhf-pipeline <overrides>``, in this process."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        run_pipeline(compose("pipeline", overrides=overrides), overrides)


CASES = [(s, f, c, k) for s, fs in STAGE_FORMATS.items() for f in fs for c in (False, True) for k in ("parquet", "jsonl")
         if c or (s, f) != ("ppo", "text")]


# the default run takes one of each (stage, format), alternating the variants; -m slow runs all four
FIRST = {(s, f): (f == "text" and s == "ppo") or i % 2 == 0 for i, (s, f) in enumerate(dict.fromkeys(c[:2] for c in CASES))}


def _marks(case) -> tuple:
    stage, fmt, conversational, kind = case
    default = conversational == FIRST[stage, fmt] and (kind == "parquet") == conversational
    return () if default else (pytest.mark.slow,)


@pytest.mark.parametrize("stage,fmt,conversational,kind", [
    pytest.param(*case, marks=_marks(case), id=f"{case[0]}-{case[1]}-{'conv' if case[2] else 'std'}-{case[3]}")
    for case in CASES])
def test_each_format_trains_each_stage_that_can_use_it(chat, tmp_path, stage, fmt, conversational, kind):
    train_file = write_dataset(tmp_path, fmt, conversational, kind, n=48, seed=0)
    val_file = write_dataset(tmp_path, fmt, conversational, kind, n=16, seed=1)
    out = tmp_path / "out"
    train(make_config(stage_overrides(stage, chat, train_file, val_file, out)))
    final = out / "t" / stage / "final"
    info = json.loads((final / "rlhf.json").read_text())
    assert (final / "model.safetensors").is_file() and info["stage"] == stage
    if stage != "ppo":
        assert info["data_counts"]["train"]["kept"] == 48
    else:  # the samples show the prompts as they were given: a conversation stays a message list
        row = json.loads((out / "t" / "ppo" / "samples.jsonl").read_text().splitlines()[0])
        assert isinstance(row["prompt"], list) == conversational and row["response"] is not None


@pytest.mark.parametrize("stage,fmt", [("rm", "text"), ("rm", "prompt_completion"), ("ppo", "text")])
def test_a_format_a_stage_cannot_use_is_named_before_training(chat, tmp_path, stage, fmt):
    f = write_dataset(tmp_path, fmt, False, "parquet", n=8, seed=0)
    with pytest.raises(DataError, match=rf"dataset {re.escape(str(f))} \(split train\) row 0: .*got keys"):
        train(make_config(stage_overrides(stage, chat, f, f, tmp_path / "out")))
    assert not (tmp_path / "out" / "t" / stage / "final").exists()


def test_a_conversational_prompt_renders_to_the_same_tokens_in_sft_rm_ppo_and_eval(chat, tmp_path, monkeypatch):
    tok = AutoTokenizer.from_pretrained(chat["policy"])
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse: cat dog sun"},
              {"role": "assistant", "content": "sun dog cat"}, {"role": "user", "content": "again: red blue tree"}]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [*prompt, {"role": "assistant", "content": "tree blue red"}]}])
    rm = write_jsonl(tmp_path / "rm.jsonl", [{"prompt": prompt, "chosen": [{"role": "assistant", "content": "tree"}],
                                             "rejected": [{"role": "assistant", "content": "red"}]}])
    ppo = write_jsonl(tmp_path / "ppo.jsonl", [{"prompt": prompt}])
    kw = dict(template="{prompt}\n", max_prompt_tokens=512, max_response_tokens=64)

    lm = LMDataModule(tok, "demonstration", str(sft), str(sft), batch_size=1, **kw)
    lm.setup()
    row = lm.data["train"][0]
    n = row["labels"].index(next(x for x in row["labels"] if x != IGNORE))
    sft_ids, sft_trained = row["input_ids"][:n], row["input_ids"][n:]
    cmp = ComparisonDataModule(tok, str(rm), str(rm), batch_size=1, **kw)
    cmp.setup()
    prompts = PromptDataModule(tok, str(ppo), batch_size=1, template=kw["template"], max_prompt_tokens=512, iterations=1)
    prompts.setup()
    seen = []
    monkeypatch.setattr(generate, "decode", lambda model, ids, mask, *a, **k: seen.append(ids[mask.bool()].tolist()) or ids)
    model = LlamaForCausalLM.from_pretrained(chat["policy"])
    generate.sample(model, tok, [prompt], "{prompt}\n", n=1, max_new_tokens=2)  # what eval, collect and best-of-n call

    rendered = tok.decode(sft_ids)
    assert rendered.startswith("<|system|>be brief<|end|>") and rendered.endswith("<|user|>again: red blue tree<|end|>\n<|assistant|>")
    assert cmp.data["train"][0]["prompt"] == prompts.prompts[0][1] == seen[0] == sft_ids
    assert tok.decode(sft_trained) == "tree blue red" + tok.eos_token  # only the last assistant turn is trained


def test_the_chat_template_is_applied_in_one_place():
    """Every stage renders through rlhf.models.tokenizer (the token-identity test checks its callers)."""
    root = Path(__file__).resolve().parents[2] / "rlhf"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "apply_chat_template" in p.read_text())
    assert users == ["models/tokenizer.py"]


def test_a_dataset_spec_picks_split_subset_free_columns_and_names_bad_rows(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:2] + [{"question": "q", "answer": " "}])}
                         ).save_to_disk(str(tmp_path / "saved"))
    spec = {"path": str(tmp_path / "saved"), "split": "test", "columns": {"prompt": "question"}}
    src = Source.of(spec, {"completion": "answer"}, key="sft_val")
    with pytest.raises(DataError, match=r"dataset .*saved \(split test\) row 2: 'completion' is empty"):
        read_jsonl(src, "demonstration")
    train_rows = read_jsonl(Source.of({**spec, "split": "train"}, {"completion": "answer"}), "demonstration")
    assert [r["prompt"] for r in train_rows] == [f"q{i}" for i in range(5)] and train_rows[0]["completion"] == "a0"
    with pytest.raises(DataError, match="no split 'dev'; it has"):
        read_jsonl(Source.of({**spec, "split": "dev"}), "prompt")
    with pytest.raises(DataError, match=r"data.files.sft_val: unknown key\(s\) \['colums'\]"):
        Source.of({"path": "x", "colums": {}}, key="sft_val")
    rng = random.Random(0)  # a directory of one parquet file per split, found by their names
    for split, n in (("train", 6), ("validation", 3)):
        (tmp_path / "ranked").mkdir(exist_ok=True)
        datasets.Dataset.from_list([_example(rng, "ranked", False) for _ in range(n)]).to_parquet(
            str(tmp_path / "ranked" / f"{split}.parquet"))
    assert len(read_jsonl(Source.of({"path": str(tmp_path / "ranked"), "split": "validation"}), "comparison")) == 3
    assert len(read_jsonl(str(tmp_path / "ranked"), "comparison")) == 6
    gz = tmp_path / "rows.jsonl.gz"  # compressed JSON lines go through datasets' json reader
    with gzip.open(gz, "wt") as f:
        f.write('{"prompt": "p0"}\n{"prompt": "p1"}\n')
    assert [r["prompt"] for r in read_jsonl(str(gz), "prompt")] == ["p0", "p1"]
    with pytest.raises(DataError, match="nope.parquet.*no such file or directory"):
        read_jsonl(str(tmp_path / "nope.parquet"), "prompt")


@pytest.mark.slow  # whole pipelines; each stage's use of each format runs by default
def test_one_pipeline_command_goes_from_a_preference_dataset_to_a_policy(chat, tmp_path):
    """HH's shape (implicit-prompt conversations) in a dataset directory with train and test splits:
    SFT on the chosen answers, the RM on the pairs, PPO on the prompts, all from the one dataset."""
    rng = random.Random(0)
    splits = {s: datasets.Dataset.from_list([_example(rng, "implicit", True) for _ in range(n)])
              for s, n in (("train", 48), ("test", 16))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hh"))
    overrides = [f"output_root={tmp_path}", "run_name=hh", f"model.pretrained={chat['policy']}", "data=dataset",
                 f"data.dataset.path={tmp_path / 'hh'}", "run_order=[sft,rm,ppo]", "debug=fast",
                 "trainer.enable_progress_bar=false", "objective=ppo/kl", *(f"+steps.ppo.{o}" for o in PPO_FAST)]
    pipeline(overrides)
    run = tmp_path / "hh"
    finished = {s: (run / s / "final" / "rlhf.json").stat().st_mtime_ns for s in ("sft", "rm", "ppo")}
    pipeline(overrides)  # again: the specs match, every step is skipped
    assert finished == {s: (run / s / "final" / "rlhf.json").stat().st_mtime_ns for s in finished}
    counts = {s: json.loads((run / s / "final" / "rlhf.json").read_text()).get("data_counts") for s in ("sft", "rm")}
    assert counts["sft"]["train"]["kept"] == counts["rm"]["train"]["kept"] == 48
    assert counts["sft"]["val"]["kept"] == counts["rm"]["val"]["kept"] == 16
    row = json.loads((run / "ppo" / "samples.jsonl").read_text().splitlines()[0])
    assert row["prompt"][0]["role"] == "user"
    assert (run / "ppo" / "final" / "model.safetensors").is_file()


def test_collection_on_conversational_prompts_gives_the_labeler_messages_and_the_rm_reads_them(chat, tmp_path):
    rng = random.Random(0)
    files = {k: write_jsonl(tmp_path / f"{k}.jsonl", [_example(rng, "prompt_only", True) for _ in range(n)])
             for k, n in (("prompts_rm", 12), ("prompts_val", 4))}
    ov = ["data=files", *(f"data.files.{k}={v}" for k, v in files.items()), f"output_root={tmp_path}", "run_name=c",
          "trainer.enable_progress_bar=false", f"init={chat['policy']}", "data.max_response_tokens=6"]
    train(make_config([*ov, "stage=collect", "stage.num_samples=4", "labeler=custom",
                       f"labeler.target={Path(__file__).resolve().parents[2] / 'examples/my_feedback.py'}:rank"]))
    comparisons = read_jsonl(tmp_path / "c" / "collect" / "comparisons_train.jsonl", "comparison")
    assert comparisons and all(r["prompt"][0]["role"] == "user" for r in comparisons)
    collected = [f"data.files.comparisons_{s}={tmp_path}/c/collect/comparisons_{s}.jsonl" for s in ("train", "val")]
    train(make_config([*ov, *collected, "stage=rm", "debug=fast", "stage.batch_size=4", "stage.normalize_data=null"]))
    assert (tmp_path / "c" / "rm" / "final" / "model.safetensors").is_file()


def test_a_files_key_takes_a_path_or_a_dataset_spec_on_the_command_line():
    cfg = make_config(["data=dataset", "data.dataset.path=org/name", "data.files.sft_train=mine.jsonl",
                       "data.files.sft_val={path:other/name,split:dev}", "stage=sft"])
    assert Source.of(cfg.data.files.sft_train) == Source("mine.jsonl")
    assert Source.of(cfg.data.files.sft_val) == Source("other/name", "dev")
    assert Source.of(cfg.data.files.comparisons_val) == Source("org/name", "test")
    cfg = make_config(["data=files", "data.files.sft_val={path:d.parquet,columns:{prompt:question}}", "stage=sft"])
    assert Source.of(cfg.data.files.sft_val) == Source("d.parquet", None, None, (("prompt", "question"),))


@pytest.mark.slow  # whole pipelines; each stage's use of each format runs by default
def test_demonstrations_and_a_labeler_run_the_papers_loop_in_one_pipeline_command(chat, tmp_path):
    """prompt + completion data (conversational parquet) and your labeler: SFT, collect, RM, PPO."""
    demos = {s: write_dataset(tmp_path, "prompt_completion", True, "parquet", n=n, seed=i)
             for i, (s, n) in enumerate((("train", 32), ("val", 8)))}
    overrides = [f"output_root={tmp_path}", "run_name=loop", f"model.pretrained={chat['policy']}", "data=files",
                 "run_order=[sft,collect,rm,ppo]", "debug=fast", "trainer.enable_progress_bar=false",
                 "objective=ppo/kl", "data.max_response_tokens=6", "labeler=custom",
                 f"labeler.target={Path(__file__).resolve().parents[2] / 'examples/my_feedback.py'}:rank",
                 f"data.files.sft_train={demos['train']}", f"data.files.sft_val={demos['val']}",
                 f"data.files.prompts_rm={demos['train']}", f"data.files.prompts_val={demos['val']}",
                 f"data.files.prompts_ppo={demos['train']}", "+steps.collect.stage.num_samples=4",
                 "+steps.rm.stage.normalize_data=null", *(f"+steps.ppo.{o}" for o in PPO_FAST)]
    pipeline(overrides)
    rm = json.loads((tmp_path / "loop" / "rm" / "final" / "rlhf.json").read_text())
    rm_config = (tmp_path / "loop" / "rm" / "config.yaml").read_text()
    assert rm["data_counts"]["train"]["kept"] > 0 and f"{tmp_path}/loop/collect/comparisons_train.jsonl" in rm_config
    assert (tmp_path / "loop" / "ppo" / "final" / "model.safetensors").is_file()


def test_eval_on_conversational_prompts_samples_judges_and_prompts_with_shots_as_turns(chat, tmp_path):
    files = {"prompts_test": write_dataset(tmp_path, "prompt_only", True, "parquet", n=6, seed=0),
             "sft_train": write_dataset(tmp_path, "prompt_completion", True, "jsonl", n=4, seed=1),
             "pretrain_val": write_dataset(tmp_path, "text", True, "parquet", n=4, seed=2)}
    train(make_config(["data=files", *(f"data.files.{k}={v}" for k, v in files.items()), f"output_root={tmp_path}",
                       "run_name=e", "stage=eval", f"stage.models.base={chat['policy']}",
                       f"stage.models.sft={chat['policy']}", f"stage.reward_model={chat['rm']}", "judge=rm",
                       "stage.best_of_n=2", "stage.prompted_shots=2", "data.max_response_tokens=4"]))
    metrics = json.loads((tmp_path / "e" / "eval" / "final" / "rlhf.json").read_text())["metrics"]
    assert {"base/win_rate", "prompted/win_rate", "best_of_n/win_rate", "sft/rm"} <= metrics.keys()
    assert metrics["sft/win_rate"] == 0.5  # the reference against itself: every pair a tie
    rows = [json.loads(line) for line in (tmp_path / "e" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[0]["prompt"][0]["role"] == "user"


def test_the_prompted_baseline_puts_its_shots_before_each_prompt():
    from rlhf.eval.measure import few_shot
    demos = [{"prompt": "a", "completion": "A"}, {"text": "no shot"}, {"prompt": [{"role": "user", "content": "b"}],
                                                                      "completion": "B"}]
    ask = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    prompts, template = few_shot(demos, [ask], "{prompt}\n")
    assert template == "{prompt}\n" and [m["content"] for m in prompts[0]] == ["s", "a", "A", "b", "B", "q"]
    prompts, template = few_shot(demos, ["q"], "{prompt}\n")  # string prompts: the shots in the template
    assert prompts == ["q"] and template.format(prompt="q") == "a\nA\nq\n"


def test_drop_invalid_skips_what_breaks_the_schema_and_counts_it(chat, tmp_path, caplog):
    """Real preference sets hold a few broken pairs (HH has identical chosen and rejected): by
    default they stop the load naming the row; data.drop_invalid=true trains on the rest."""
    rng = random.Random(0)
    rows = [_example(rng, "implicit", True) for _ in range(40)]
    rows[3]["rejected"] = rows[3]["chosen"]  # the same answer twice
    rows[7]["rejected"] = rows[7]["chosen"][:1] + [{"role": "user", "content": "and?"}]  # no assistant answer
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "hh.parquet"))
    ov = stage_overrides("rm", chat, tmp_path / "hh.parquet", tmp_path / "hh.parquet", tmp_path / "out")
    with pytest.raises(DataError, match=r"hh.parquet \(split train\) row 3: 'chosen' and 'rejected' are the same "
                                        r"conversation .*data.drop_invalid=true"):
        train(make_config(ov))
    with caplog.at_level("WARNING", logger="rlhf.data"):
        train(make_config([*ov, "data.drop_invalid=true"]))
    counts = json.loads((tmp_path / "out" / "t" / "rm" / "final" / "rlhf.json").read_text())["data_counts"]["train"]
    assert counts["kept"] == 38 and counts["dropped_invalid"] == 2
    assert "2 of 40 records dropped, not valid comparison records (data.drop_invalid): row 3: " in caplog.text
    assert "row 7: 'rejected' must be one assistant message, got roles ['user']" in caplog.text
