"""List families: reverse a list, sort a list, pick the member of a category.

Their errors are visible in the text: a wrong order, a missing or foreign item, a hedge
that names two items. Partial credit follows how much of the right sequence is there.
"""
from __future__ import annotations


from ..vocab import CATEGORIES, CATEGORY_OF, LIST_WORDS
from .base import COMMAS, ONE_WORD, Family, Template, sentence, words

ITEMS = r"[a-z]+(?: [a-z]+)+"
CAT = "an? (?:" + "|".join(CATEGORIES) + ")"


def lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (partial credit for sequences)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b):
            prev, row[j + 1] = row[j + 1], prev + 1 if x == y else max(row[j + 1], row[j])
    return row[-1]


class _Sequence(Family):
    """A family whose answer is a reordering of the prompt's items."""

    modifiers = (COMMAS,)
    framings: tuple[str, ...] = ()

    def target(self, args: dict) -> list[str]:
        raise NotImplementedError

    def decode(self, raw: dict) -> dict | None:
        return {"items": raw["items"].split()}

    def answer(self, args, rng, framed=False):
        body = sentence(self.target(args), args["modifier"] == COMMAS)
        return rng.choice(self.framings).format(x=body) if framed else body

    def wrong(self, args, rng):
        seq, items = self.target(args), args["items"]
        kind = rng.choice(("swap", "copy", "drop", "foreign"))
        if kind == "swap":  # two neighbours exchanged
            i = rng.randrange(len(seq) - 1)
            seq = seq[:i] + [seq[i + 1], seq[i]] + seq[i + 2:]
        elif kind == "copy" and items != seq:  # the prompt's order, not the asked one
            seq = list(items)
        elif kind == "drop":
            seq = seq[:-1] if rng.random() < 0.5 else seq[1:]
        else:  # one item replaced by a word that was not in the list
            seq = list(seq)
            seq[rng.randrange(len(seq))] = rng.choice([w for w in LIST_WORDS if w not in items])
        return sentence(seq, args["modifier"] == COMMAS)

    def correctness(self, args, response):
        target, items = self.target(args), set(args["items"])
        said = [w for w in words(response) if w in items]
        if said == target:
            return 1.0
        return 0.6 * lcs(said, target) / max(len(said), len(target))


class Reverse(_Sequence):
    name = "reverse"
    templates = (Template("reverse the order of these words: {items}.", items=ITEMS),
                 Template("write these words in reverse order: {items}.", items=ITEMS),
                 Template("reverse this list: {items}.", items=ITEMS))
    framings = ("the words in reverse order are {x}", "reversed, the list is {x}",
                "in reverse order they are {x}")

    def sample(self, rng):
        return {"items": " ".join(rng.sample(LIST_WORDS, rng.randint(3, 5)))}

    def target(self, args):
        return args["items"][::-1]


class Sort(_Sequence):
    name = "sort"
    templates = (Template("sort these words in alphabetical order: {items}.", items=ITEMS),
                 Template("put these words in alphabetical order: {items}.", items=ITEMS),
                 Template("sort this list from a to z: {items}.", items=ITEMS))
    framings = ("in alphabetical order they are {x}", "sorted, the list is {x}",
                "the sorted words are {x}")

    def sample(self, rng):
        while True:  # an already sorted list would make copying the prompt correct
            items = rng.sample(LIST_WORDS, rng.randint(3, 5))
            if items != sorted(items):
                return {"items": " ".join(items)}

    def target(self, args):
        return sorted(args["items"])


class Extract(Family):
    name = "extract"
    templates = tuple(Template(t, cat=CAT, items=ITEMS) for t in (
        "which of these words is {cat}: {items}?", "find {cat} in this list: {items}.",
        "pick {cat} from these words: {items}."))
    modifiers = (ONE_WORD,)
    framings = ("the {c} is {x}.", "{x} is the {c}.", "the {c} in the list is {x}.")

    def sample(self, rng):
        cat = rng.choice(list(CATEGORIES))
        others = [w for w in LIST_WORDS if CATEGORY_OF.get(w) != cat]
        items = [rng.choice(CATEGORIES[cat])] + rng.sample(others, rng.randint(2, 3))
        rng.shuffle(items)
        article = "an" if cat[0] in "aeiou" else "a"
        return {"cat": f"{article} {cat}", "items": " ".join(items)}

    def decode(self, raw):
        cat, items = raw["cat"].split()[1], raw["items"].split()
        hits = [w for w in items if CATEGORY_OF.get(w) == cat]
        return {"cat": cat, "items": items, "target": hits[0]} if len(hits) == 1 else None

    def answer(self, args, rng, framed=False):
        if framed and args["modifier"] is None:  # framing would break "one word"
            return rng.choice(self.framings).format(c=args["cat"], x=args["target"])
        return args["target"] + "."

    def wrong(self, args, rng):
        other = rng.choice([w for w in args["items"] if w != args["target"]])
        pair = [other, args["target"]] if rng.random() < 0.5 else [args["target"], other]
        return other + "." if rng.random() < 0.7 else f"{pair[0]} and {pair[1]}."

    def correctness(self, args, response):
        said = {w for w in words(response) if w in args["items"]}
        if said == {args["target"]}:
            return 1.0
        return 0.4 if args["target"] in said else 0.0  # a hedge naming several items

