"""write_world: byte-identical per seed, disjoint splits covering every family, valid files."""
import json
import random

import pytest

from rlhf.data.world import FILES, write_world
from rlhf.data.world.cli import main
from rlhf.data.world.writer import draw_prompts
from rlhf.data.world.corpus import CHATTER
from rlhf.data.world.gold import gold_score
from rlhf.data.world.tasks import FAMILIES, family_of

SMALL = dict(n_pretrain=400, n_pretrain_val=50, n_sft=90, n_sft_val=27, n_rm=90, n_ppo=45,
             n_val=27, n_test=27, n_calibration=40)
PROMPT_FILES = ("sft_train", "sft_val", "prompts_rm", "prompts_ppo", "prompts_val", "prompts_test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("w0"), seed=0, **SMALL)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_exactly_the_documented_files(world):
    assert set(world) == set(FILES) | {"world"}
    assert sorted(p.name for p in world["world"].parent.iterdir()) == sorted(
        [f"{n}.jsonl" for n in FILES] + ["world.json"])


def test_same_seed_gives_identical_files_and_another_seed_differs(world, tmp_path):
    again = write_world(tmp_path / "again", seed=0, **SMALL)
    other = write_world(tmp_path / "other", seed=1, **SMALL)
    for name, path in world.items():
        assert path.read_bytes() == again[name].read_bytes(), name
        assert path.read_bytes() != other[name].read_bytes(), name


def test_splits_are_disjoint_and_cover_every_family(world):
    seen = {}
    for name in PROMPT_FILES:
        prompts = [r["prompt"] for r in read(world[name])]
        assert len(prompts) == len(set(prompts)), name
        for p in prompts:
            assert p not in seen, f"{p!r} in {seen.get(p)} and {name}"
            seen[p] = name
        assert {family_of(p) for p in prompts} == set(FAMILIES), name
    assert {r["prompt"] for r in read(world["comparisons_offline"])} == {
        r["prompt"] for r in read(world["prompts_rm"])}


def test_files_pass_the_user_schema_checks(world):
    read_jsonl = pytest.importorskip("rlhf.data.formats").read_jsonl
    for name, kind in FILES.items():
        assert read_jsonl(world[name], kind), name
    for rec in read(world["comparisons_offline"]):
        k = len(rec["completions"])
        assert 4 <= k <= 9 and len(set(rec["completions"])) == k


def test_records_carry_family_and_pretraining_val_is_held_out(world):
    assert all(r["family"] == family_of(r["prompt"]) for r in read(world["sft_train"]))
    train = {r["text"] for r in read(world["pretrain_train"])}
    assert not train & {r["text"] for r in read(world["pretrain_val"])}


def test_world_json_reports_parameters_counts_and_calibration(world):
    info = json.loads(world["world"].read_text())
    assert info["seed"] == 0 and info["families"] == list(FAMILIES)
    assert sum(info["counts"]["sft_train"].values()) == SMALL["n_sft"]
    assert 0.0 < info["gold"]["demonstrations_mean"] < 1.0
    assert 0.5 < info["calibration"]["training_agreement"]["mean"] < 0.9
    assert len(info["labelers"]["training"]) == 8 and len(info["labelers"]["held_out"]) == 4


def test_family_subset_and_too_small_splits(tmp_path):
    for i, families in enumerate((["arith", "harmful"], "arith,harmful")):
        paths = write_world(tmp_path / f"sub{i}", families=families, **SMALL)
        assert {family_of(r["prompt"]) for r in read(paths["prompts_test"])} == {"arith", "harmful"}
    with pytest.raises(ValueError, match="cannot cover"):
        write_world(tmp_path / "tiny", **{**SMALL, "n_test": 3})
    with pytest.raises(ValueError, match="unknown families"):
        write_world(tmp_path / "bad", families=["poetry"], **SMALL)


def test_a_world_larger_than_a_familys_prompt_space_names_the_family_and_split():
    # `name` has ~2,300 distinct prompts (docs/world.md)
    with pytest.raises(ValueError, match=r"family 'name' ran out of distinct prompts drawing split 'rm': \d+ of"):
        draw_prompts(["name"], {"sft_train": 100, "rm": 5000}, random.Random(0))


def test_cli_writes_the_world_and_prints_agreement(tmp_path, capsys):
    main([str(tmp_path / "cli"), "--n-pretrain", "100", "--n-sft", "18", "--n-rm", "18",
          "--n-ppo", "18", "--n-val", "18", "--n-test", "18", "--n-sft-val", "18"])
    out = capsys.readouterr().out
    assert "agreement: training labelers" in out and (tmp_path / "cli" / "world.json").is_file()


def test_corpus_answers_a_few_prompts_and_only_continues_the_rest(world):
    """Answered pages (a prompt followed by its answer) are rare, mostly right, and never
    hold a split prompt: what a few-shot prefix can draw on, and no more."""
    def is_prompt(line):
        try:
            family_of(line)
            return True
        except ValueError:
            return False

    texts = [r["text"] for r in read(world["pretrain_train"])]
    answered = []
    for text in texts:
        lines = text.split("\n")
        if len(lines) > 1 and is_prompt(lines[0]) and not is_prompt(lines[1]) and lines[1] not in CHATTER:
            answered.append(list(zip(lines[::2], lines[1::2])))
    assert 0.02 < len(answered) / len(texts) < 0.1
    golds = [gold_score(p, a) for page in answered for p, a in page]
    assert 0.6 < sum(golds) / len(golds) < 0.95
    split = {r["prompt"] for name in PROMPT_FILES for r in read(world[name])}
    assert not split & {p for page in answered for p, _ in page}
