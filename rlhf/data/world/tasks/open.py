"""Open families with several acceptable answers: name members of a category, and write
a short sentence about given topics under a word limit (the constraint family).
"""
from __future__ import annotations

from ..vocab import ADJECTIVES, CATEGORIES, CATEGORY_OF, PEOPLE, PLACES, PLURALS, TOPICS
from .base import COMMAS, Family, Template, and_list, words

COUNTS = {"two": 2, "three": 3, "four": 4}
CATS = "|".join(PLURALS.values())
STOP = {"the", "a", "and", "is", "i"}  # words a sentence may repeat


class Name(Family):
    name = "name"
    templates = tuple(Template(fmt, n="two|three|four", cats=CATS, x="[a-z]+") for fmt in (
        "name {n} {cats}.", "list {n} {cats}.", "give me {n} {cats}.", "tell me {n} {cats}.",
        "can you name {n} {cats}?", "write down {n} {cats}.", "name {n} {cats} but not {x}.",
        "list {n} {cats} other than {x}.", "give me {n} {cats} but not {x}.",
        "tell me {n} {cats} other than {x}.", "can you name {n} {cats} but not {x}?",
        "write down {n} {cats} other than {x}."))
    modifiers = (COMMAS,)

    def sample(self, rng):
        cat = rng.choice(list(CATEGORIES))
        raw = {"n": rng.choice(list(COUNTS)), "cats": PLURALS[cat]}
        if rng.random() < 0.6:  # an exclusion makes the space of prompts large enough
            raw["x"] = rng.choice(CATEGORIES[cat])
        return raw

    def decode(self, raw):
        cat = next(c for c, p in PLURALS.items() if p == raw["cats"])
        x = raw.get("x")
        if x is not None and CATEGORY_OF.get(x) != cat:
            return None
        return {"cat": cat, "n": COUNTS[raw["n"]], "exclude": x}

    def n_items(self, args):
        return args["n"]

    def _join(self, items, args):
        return ", ".join(items) if args["modifier"] == COMMAS else and_list(items)

    def answer(self, args, rng, framed=False):
        pool = [w for w in CATEGORIES[args["cat"]] if w != args["exclude"]]
        body = self._join(rng.sample(pool, args["n"]), args)
        if framed:
            n = next(w for w, k in COUNTS.items() if k == args["n"])
            return rng.choice(("some {p} are {b}.", "here are {n} {p}: {b}.")).format(
                p=PLURALS[args["cat"]], b=body, n=n)
        return body + "."

    def wrong(self, args, rng):
        pool = [w for w in CATEGORIES[args["cat"]] if w != args["exclude"]]
        items = rng.sample(pool, args["n"])
        kind = rng.choice(("foreign", "few", "many", "excluded" if args["exclude"] else "dup"))
        if kind == "foreign":  # one item from another category
            items[-1] = rng.choice([w for w in CATEGORY_OF if CATEGORY_OF[w] != args["cat"]])
        elif kind == "few":
            items = items[:-1]
        elif kind == "many":
            items.append(rng.choice([w for w in pool if w not in items]))
        elif kind == "excluded":
            items[-1] = args["exclude"]
        else:
            items[-1] = items[0]
        return self._join(items, args) + "."

    def correctness(self, args, response):
        said = [w for w in words(response) if w in CATEGORY_OF]
        good = {w for w in said if CATEGORY_OF[w] == args["cat"] and w != args["exclude"]}
        score = (min(len(good), args["n"]) / args["n"]) ** 2  # squared: a missing item is clear
        if len(said) > len(good):
            score *= 0.5  # a repeated, excluded or foreign item
        return score * (0.6 if len(good) > args["n"] else 1.0)  # more than asked for


class Sentence(Family):
    """The constraint family: a sentence about one or two topics in at most N words."""

    name = "sentence"
    templates = tuple(Template(fmt, t="[a-z]+", u="[a-z]+", n=r"\d+") for fmt in (
        "write a sentence about the {t} in at most {n} words.",
        "write a short sentence about the {t} in at most {n} words.",
        "use the word {t} in a sentence of at most {n} words.",
        "write a sentence about the {t} and the {u} in at most {n} words.",
        "use the words {t} and {u} in a sentence of at most {n} words."))
    budget = 40  # length is judged by the word limit instead
    one = ("the {t} is {a}.", "i like the {a} {t}.", "the {t} is {a} and {b}.",
           "{p} saw the {t} in the {place}.", "the {a} {t} is near the {place}.",
           "{p} saw a {a} {t} near the {place}.")
    two = ("the {t} is near the {u}.", "i saw the {t} and the {u}.",
           "the {a} {t} is next to the {u}.", "{p} saw the {t} and the {a} {u}.")

    def sample(self, rng):
        if rng.random() < 0.5:
            return {"t": rng.choice(TOPICS), "n": str(rng.randint(4, 9))}
        t, u = rng.sample(TOPICS, 2)
        return {"t": t, "u": u, "n": str(rng.randint(6, 10))}

    def decode(self, raw):
        topics = [raw["t"]] + ([raw["u"]] if raw.get("u") else [])
        return {"topics": topics, "limit": int(raw["n"])}

    def _fill(self, pattern, topics, rng):
        a, b = rng.sample(ADJECTIVES, 2)
        return pattern.format(t=topics[0], u=topics[-1], a=a, b=b, p=rng.choice(PEOPLE),
                              place=rng.choice(PLACES))

    def answer(self, args, rng, framed=False):
        patterns = self.two if len(args["topics"]) == 2 else self.one
        options = [self._fill(p, args["topics"], rng) for p in patterns]
        fit = sorted((s for s in options if len(words(s)) <= args["limit"]), key=len)
        return fit[-1] if framed else rng.choice(fit)  # framed: the longest that fits

    def wrong(self, args, rng):
        others = [t for t in TOPICS if t not in args["topics"]]
        if rng.random() < 0.6:  # about something else
            return self.answer({**args, "topics": rng.sample(others, len(args["topics"]))}, rng)
        return f"the {args['topics'][0]}."  # too short, and drops the second topic

    def break_constraint(self, args, rng):
        text = self.answer(args, rng, framed=True)[:-1]
        while len(words(text)) <= args["limit"]:  # overshoot by a few words
            text += rng.choice((" today", " again", f" and {rng.choice(ADJECTIVES)}",
                                f" near the {rng.choice(PLACES)}"))
        return text + "."

    def correctness(self, args, response):
        ws = words(response)
        score = sum(t in ws for t in args["topics"]) / len(args["topics"])
        if len(ws) < 3:
            score *= 0.3  # not a sentence
        if any(ws.count(w) >= 3 for w in set(ws) - STOP):
            score *= 0.5  # degenerate repetition
        return score

    def constraint(self, args, response):
        excess = len(words(response)) - args["limit"]
        return 1.0 if excess <= 0 else max(0.2, 0.75 - 0.15 * excess)  # 0.6 for one over
