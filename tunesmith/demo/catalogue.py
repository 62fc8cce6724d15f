"""The demo's data: a fictional outdoor-clothing store whose products no pre-trained model can know.

Everything is generated from a seed with ``random.Random`` (no torch, no network), so the same seed writes
byte-identical files. The demo fine-tunes a small model on ``train.jsonl`` and scores base vs tuned answers
on ``validation.jsonl``, whose questions use **held-out phrasings** (templates never used in training); an
answer counts as correct when it contains the expected value (:func:`answer_contains`).

Why the values look the way they do: a base model scores on a question only if its guess *contains* the
value, so values are specific (``"ember orange"``, ``"$74.50"``, ``"29 months"``, ``"hand wash at 35°C"``)
rather than generic (``"blue"``, ``"2 years"``); each product gets its own value per attribute so guessing
the most common value scores 1 / n_products; no value is a substring of another value of the same
attribute, so a right answer for one product can never count as right for another. Values stay short
(1-4 words) because every training token costs CPU time (~150 tokens/s on 2 cores).

Run it by hand::

    python -c "from tunesmith.demo.catalogue import generate_demo_data as g; print(g('demo_data'))"
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product as cartesian
from pathlib import Path
from typing import Any

from tunesmith.demo.replay import REPLAY_CHATS
from tunesmith.errors import ConfigError
from tunesmith.io import write_jsonl_atomic, write_text_atomic

ATTRIBUTES: tuple[str, ...] = ("material", "colour", "price", "sizes", "care", "warranty")

# Invented words (checked to be no common English word, place or well-known brand); one per product, so a
# product is identified by its first word and the model never has to tell two "Velmora ..." apart.
NAME_WORDS: tuple[str, ...] = (
    "Velmora", "Quorrin", "Brastelle", "Tavrin", "Oskelund", "Fenwyr", "Caldris", "Mirevane", "Zorvik",
    "Halvessa", "Drumlyn", "Pellarin", "Yarrowen", "Lunveth", "Sorbeck", "Varnholt", "Quillane", "Brivane",
    "Corvessa", "Dalmyr", "Elvanor", "Faldrin", "Grevholm", "Hollisk", "Istrava", "Jorvane", "Kestrova",
    "Larnwick", "Mosrel", "Nuvanta", "Orlisse", "Pravent", "Rendail", "Sylvark", "Tolvane", "Ulmarek",
    "Vintrel", "Wexmoor", "Ysolven", "Zandrel", "Ambrett", "Belvint", "Cosmarel", "Derrowin", "Estravel",
    "Fiorn", "Galtrey", "Heskel", "Ivoran", "Jessamar", "Korvath", "Lissander", "Marrovek", "Nessaly",
    "Ombrelle", "Pastrun", "Quenvald", "Rossimer", "Saltrevy", "Tirnavel",
)  # fmt: skip
# Singular garments only, so every answer template reads as a grammatical sentence.
PRODUCT_TYPES: tuple[str, ...] = (
    "trail jacket", "rain shell", "fleece hoodie", "down vest", "base layer", "knit beanie",
    "insulated parka", "wool sweater", "cycling jersey", "merino tee", "hiking skirt", "sun hat",
)  # fmt: skip
BRANDS: tuple[str, ...] = (
    "Brackenmoor Outfitters", "Tallowmere Supply", "Quennick Outdoor", "Harrowdeep Gear",
    "Olvenstone Trail Co",
)  # fmt: skip

# Two-part values: a (first, second) pair per product, balanced so no word dominates an attribute.
_COLOUR_PARTS = (
    ("heather", "ember", "glacier", "moss", "dune", "storm", "lichen", "harbour", "saffron", "fjord"),
    ("teal", "orange", "grey", "olive", "rust", "plum", "ochre", "navy", "sage", "coral"),
)
_MATERIAL_PARTS = (
    ("recycled", "brushed", "boiled", "felted", "washed", "waxed", "peached", "bonded", "coated", "combed"),
    ("merino wool", "hemp canvas", "nylon twill", "alpaca knit", "linen blend", "bamboo jersey",
     "yak down", "cork fabric", "ripstop polyester", "tencel fleece"),
)  # fmt: skip
_CARE_PARTS = (
    ("hand wash", "machine wash", "gentle cycle", "wool cycle", "delicates cycle", "quick cycle",
     "eco cycle", "synthetics cycle", "soak", "rinse"),
    # No 30/40/60: the common label temperatures are what a base model would guess.
    ("at 20°C", "at 25°C", "at 35°C", "at 45°C", "at 50°C", "at 55°C"),
)  # fmt: skip
_SIZE_SYSTEMS = (  # (label, first sizes, range widths)
    ("EU", range(34, 43), (6, 8, 10, 12)),
    ("UK", range(3, 8), (5, 6, 7)),
    ("US", range(4, 9), (5, 6, 7)),
    ("JP", range(22, 25), (4, 5, 6)),
)
_CENTS = ("15", "25", "35", "45", "55", "65", "85")  # never .00 / .99: round prices are guessable
# Month counts that are not whole years (a base model says "1 year", "24 months", ...); two digits each,
# so "7 months" can never hide inside "27 months".
_WARRANTY_MONTHS = tuple(m for m in range(13, 96) if m % 6)

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "material": (
        "What is the {product} made of?", "Which material is used for the {product}?",
        "What material is the {product}?", "What fabric is the {product} made from?",
        "Tell me the material of the {product}.",
    ),
    "colour": (
        "What colour is the {product}?", "Which colour does the {product} come in?",
        "What is the colour of the {product}?", "What color is the {product}?",
        "In what colour is the {product} sold?",
    ),
    "price": (
        "How much does the {product} cost?", "What is the price of the {product}?",
        "How much is the {product}?", "What does the {product} sell for?",
        "What's the {product} priced at?",
    ),
    "sizes": (
        "What sizes does the {product} come in?", "Which sizes are available for the {product}?",
        "What is the size range of the {product}?", "In which sizes can I get the {product}?",
        "What sizes is the {product} made in?",
    ),
    "care": (
        "How should I wash the {product}?", "What are the care instructions for the {product}?",
        "How do I clean the {product}?", "How do I care for the {product}?",
        "What is the washing advice for the {product}?",
    ),
    "warranty": (
        "How long is the warranty on the {product}?", "What warranty does the {product} have?",
        "How long is the {product} guaranteed for?", "What is the warranty period of the {product}?",
        "For how long is the {product} covered by warranty?",
    ),
}  # fmt: skip
# Questions that *start* with the product name. Each fact gets one of these among its phrasings because the
# tokenizer splits a name differently at the start of a message ("Rendail" -> "R", "end", "ail") than after a
# word (" R", "end", "ail"): with the name only ever after "the", the tuned model (seed 2, 2026-12-06)
# answered 97 % of held-out questions that name the product mid-sentence but 64 % of those that open with it
# ("Rossimer fleece hoodie: size range?"), giving another product's value. Users type both.
NAME_FIRST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "material": ("{product} material?", "{product} - what is it made of?"),
    "colour": ("{product} colour?", "{product} - what colour is it?"),
    "price": ("{product} price?", "{product} - how much is it?"),
    "sizes": ("{product} sizes?", "{product} - which sizes are there?"),
    "care": ("{product} care instructions?", "{product} - how do I wash it?"),
    "warranty": ("{product} warranty?", "{product} - how long is the warranty?"),
}
# Never used in training: these measure whether the model learnt the fact, not one phrasing of it.
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "material": (
        "I'd like to know the material of the {product}.", "{product}: what fabric?",
        "Could you tell me what the {product} is made from?",
    ),
    "colour": (
        "{product}: which colour?", "I'm curious about the shade of the {product}.",
        "What hue does the {product} have?",
    ),
    "price": (
        "{product}: how much?", "Price check on the {product}, please.",
        "I want to buy the {product}. What will I pay?",
    ),
    "sizes": (
        "{product}: size range?", "Tell me the available sizes for the {product}.",
        "Can I get the {product} in my size? Which sizes exist?",
    ),
    "care": (
        "{product}: washing instructions?", "What's the right way to launder the {product}?",
        "Any cleaning tips for the {product}?",
    ),
    "warranty": (
        "{product}: warranty length?", "If the {product} breaks, how long am I covered?",
        "Tell me about the guarantee on the {product}.",
    ),
}  # fmt: skip
# Answers say "It ..." rather than repeating the product name: 7 fewer tokens per row (-20 % training time),
# and a model that garbles an invented name ("Vinyl Wool base layer" for "Ivoran base layer") then tends to
# recall the garbled product's value. The value is the only hard part; the question already names the product.
ANSWER_TEMPLATES: dict[str, str] = {
    "material": "It is made of {value}.",
    "colour": "It comes in {value}.",
    "price": "It costs {value}.",
    "sizes": "It is available in {value}.",
    "care": "Its care label says {value}.",
    "warranty": "It is covered for {value}.",
}
# Training phrasings per fact, by attribute. Numbers are the slow facts to learn: each digit is its own token
# and digits look alike to the model, so after 3 epochs with 3 phrasings each, prices and warranties were
# right 10 % and 5 % of the time while materials were 92 %. More phrasings where it is hard, fewer where it
# is easy, keeps the token budget (= CPU time) about the same.
DEMO_PHRASINGS: dict[str, int] = {
    "material": 3,
    "colour": 3,
    "price": 5,
    "sizes": 4,
    "care": 4,
    "warranty": 5,
}
OVERVIEW_QUESTION = "Tell me about the {product}."
OVERVIEW_ANSWER = (
    "The {product} by {brand} is made of {material} in {colour} and costs {price}. "
    "Sizes: {sizes}. Care: {care}. Warranty: {warranty}."
)

GENERAL_QUESTIONS_FILE = Path(__file__).with_name("general_questions.jsonl")


def _load_general_questions(path: Path = GENERAL_QUESTIONS_FILE) -> tuple[tuple[str, tuple[str, ...]], ...]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple((row["question"], tuple(row["answers"])) for row in rows)


# The general check (package data, ``general_questions.jsonl``): short factual questions, accepted answers,
# written for tunesmith (not taken from a dataset). 296 were written; these are the ones the base
# SmolLM2-135M-Instruct answers right (greedy, fp32, empty system turn) within the first 16 generated tokens,
# read by hand to drop lucky matches (e.g. "ecology, a branch of biology"). The others cannot show forgetting:
# retention is measured on what the base knows. None repeats a replay question (``replay.REPLAY_CHATS``).
GENERAL_QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = _load_general_questions()

# Plain encyclopedic prose written for tunesmith (not copied from anywhere); perplexity on it before and
# after tuning shows whether the model kept its general language ability.
GENERAL_TEXT = """\
Bread is one of the oldest prepared foods. In its simplest form it is made from flour, water and salt, \
mixed into a dough and baked. Most loaves also contain yeast, a tiny fungus that feeds on the sugars in \
the flour and releases carbon dioxide. The gas is trapped by a stretchy network of proteins called \
gluten, which forms when wheat flour is mixed with water and kneaded. As the bubbles grow, the dough \
rises. In the hot oven the gas expands further, the yeast dies, and the outside of the loaf dries and \
browns into a crust. Flatbreads, which are baked without yeast, are eaten in many parts of the world and \
can be cooked in a few minutes on a hot stone or pan.

Water on Earth moves in a continuous cycle. Heat from the sun warms oceans, lakes and rivers, and some of \
the water evaporates into the air as an invisible gas. As warm, moist air rises it cools, and the water \
vapour condenses into tiny droplets that form clouds. When the droplets join together and become heavy \
enough, they fall as rain, or as snow when the air is cold. Some of that water flows over the ground \
into streams and rivers, some soaks into the soil and becomes groundwater, and some is taken up by \
plants, which release it again through their leaves. Sooner or later almost all of it returns to the sea.

The bicycle is a simple and efficient machine. A rider pushes on two pedals attached to a crank, which \
turns a toothed wheel called a chainring. A chain carries that motion to a smaller set of gears on the \
rear wheel. By choosing a larger or smaller rear gear, the rider trades speed for ease of pedalling, \
which is why climbing a hill feels easier in a low gear. Air-filled rubber tyres soften bumps in the \
road, and brakes press pads against the rim or a metal disc to slow the wheels. Because a bicycle needs \
no fuel and takes up little space, it remains a popular way to travel short distances in towns.

Tea is made by pouring hot water over the dried leaves of the tea plant, an evergreen shrub first grown \
in East Asia. Green tea is made from leaves that are heated soon after picking, which keeps their colour \
and fresh taste. Black tea comes from leaves that are rolled and left exposed to the air, so that they \
darken and develop a stronger flavour. Many people add milk, lemon or sugar, while others prefer it \
plain. Herbal drinks made from mint, chamomile or dried fruit are often called tea as well, although \
they contain no leaves from the tea plant.

A library is a collection of books and other materials that people can read or borrow. Public libraries \
are usually paid for by a town or city and are open to everyone. Besides books, they often lend films, \
music and newspapers, offer computers with internet access, and hold reading groups for children. Books \
are arranged on the shelves by subject, so that works on the same topic sit side by side, and a \
catalogue helps visitors find what they are looking for. Librarians help people with research, suggest \
books to read and look after the collection so that it lasts for many years.

Sleep is a natural state of rest for the body and mind. During sleep the heart rate slows, the muscles \
relax and the brain passes through several stages, including the stage in which most dreams occur. \
Adults usually need seven to nine hours of sleep each night, while children and teenagers need more. A \
regular bedtime, a dark and quiet room and less screen time in the evening all make it easier to fall \
asleep. Without enough sleep, people find it harder to concentrate, remember things and stay in a good \
mood.
"""

_SPACE_RE = re.compile(r"\s+")
# NFKC would turn the ordinal "º" (often typed for a degree sign) into "o", so degree look-alikes go first.
_DEGREE_SIGNS = dict.fromkeys(map(ord, "º˚"), "°")
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"), "-")
_QUOTES = {**dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2032"), "'"),
           **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f\u2033"), '"')}  # fmt: skip
# "30°C", "30 °C", "30° C", "30 degrees", "30 degrees Celsius", "30º c" -> "30°c"
_DEGREES_RE = re.compile(r"(\d)\s*(?:°\s*c(?:elsius)?\b|°|degrees?(?:\s+(?:celsius|centigrade|c)\b)?)")


@dataclass(frozen=True)
class DemoPaths:
    """Where :func:`generate_demo_data` wrote each file."""

    train: Path
    validation: Path
    facts: Path
    general_questions: Path
    general_text: Path
    retain: Path


@dataclass(frozen=True)
class Product:
    """One catalogue entry; ``values`` maps each name in :data:`ATTRIBUTES` to its value string."""

    name: str
    values: dict[str, str]


@dataclass(frozen=True)
class Catalogue:
    """The fictional store: its brand and products."""

    brand: str
    products: tuple[Product, ...]


def normalize_text(text: str) -> str:
    """Normalize for substring scoring: NFKC, lowercase, ASCII dashes/quotes, ``$ 74`` -> ``$74``,
    any spelling of a temperature (``30 °C``, ``30 degrees Celsius``) -> ``30°c``, single spaces."""
    text = (
        unicodedata.normalize("NFKC", text.translate(_DEGREE_SIGNS))
        .lower()
        .translate(_DASHES)
        .translate(_QUOTES)
    )
    text = _DEGREES_RE.sub(r"\1°c", text)
    text = re.sub(r"\$\s+(?=\d)", "$", text)
    return _SPACE_RE.sub(" ", text).strip()


def answer_contains(prediction: str, value: str) -> bool:
    """True when ``value`` occurs in ``prediction`` after :func:`normalize_text` on both.

    Case-insensitive; tolerant of unicode dashes/quotes, a space after ``$`` and spelled-out degrees
    (``"hand wash at 35 degrees C"`` contains ``"hand wash at 35°C"``). Where the value starts or ends with a
    letter or digit the match must not continue a word or number there, so ``"7"`` is not found in ``"17"``
    nor ``"ice"`` in ``"price"``. An empty value never matches.
    """
    needle = normalize_text(value)
    if not needle:
        return False
    before = r"(?<!\w)" if needle[0].isalnum() else ""
    after = r"(?!\w)" if needle[-1].isalnum() else ""
    return re.search(before + re.escape(needle) + after, normalize_text(prediction)) is not None


def max_products() -> int:
    """The largest ``n_products`` the value pools support with every value distinct."""
    sizes = sum(len(starts) * len(widths) for _, starts, widths in _SIZE_SYSTEMS)
    pairs = [len(a) * len(b) for a, b in (_COLOUR_PARTS, _MATERIAL_PARTS, _CARE_PARTS)]
    return min(len(NAME_WORDS), sizes, len(_WARRANTY_MONTHS), *pairs)


def _overlaps(value: str, chosen: list[str]) -> bool:
    """True if ``value`` equals, contains or is contained in an already chosen value (normalized)."""
    v = normalize_text(value)
    return any(v in c or c in v for c in map(normalize_text, chosen))


def _pick_distinct(rng: random.Random, candidates: list[str], n: int) -> list[str]:
    """``n`` values from ``candidates`` (in shuffled order), none a substring of another."""
    pool = list(candidates)
    rng.shuffle(pool)
    chosen: list[str] = []
    for value in pool:
        if len(chosen) == n:
            break
        if not _overlaps(value, chosen):
            chosen.append(value)
    if len(chosen) < n:
        raise ConfigError(f"only {len(chosen)} distinct values available, {n} needed; lower n_products")
    return chosen


def _balanced_pairs(
    rng: random.Random, firsts: tuple[str, ...], seconds: tuple[str, ...], n: int
) -> list[str]:
    """``n`` distinct "first second" values in which each part is reused as evenly as possible.

    Even reuse matters for learning: if eight products were "heather something", the model would have to
    separate eight near-identical facts. Greedy over shuffled pairs with per-part caps; the cap is raised
    only if the greedy pass gets stuck.
    """
    combos = list(cartesian(firsts, seconds))
    rng.shuffle(combos)
    cap = max(math.ceil(n / len(firsts)), math.ceil(n / len(seconds)))
    chosen: list[str] = []
    uses: Counter[str] = Counter()
    while len(chosen) < n:
        if cap > n:
            raise ConfigError(f"only {len(chosen)} distinct values available, {n} needed; lower n_products")
        for a, b in combos:
            value = f"{a} {b}"
            if len(chosen) < n and uses[a] < cap and uses[b] < cap and not _overlaps(value, chosen):
                chosen.append(value)
                uses.update((a, b))
        cap += 1
    return chosen


def _prices(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct prices, $19 to $389, uncommon cents (the ``$`` keeps "$74.15" out of "$174.15")."""
    return _pick_distinct(rng, [f"${d}.{c}" for d in range(19, 390) for c in _CENTS], n)


def _size_ranges(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct size ranges across several sizing systems ("EU 38 to 46", "UK 4 to 10")."""
    ranges = [
        f"{label} {start} to {start + width}"
        for label, starts, widths in _SIZE_SYSTEMS
        for start in starts
        for width in widths
    ]
    return _pick_distinct(rng, ranges, n)


def build_catalogue(seed: int = 0, n_products: int = 40) -> Catalogue:
    """The store for ``seed``: a brand and ``n_products`` products, each with a distinct value per attribute.

    Raises:
        ConfigError: ``n_products`` is below 1 or above :func:`max_products`.
    """
    if not 1 <= n_products <= max_products():
        raise ConfigError(f"n_products must be between 1 and {max_products()}, got {n_products}")
    rng = random.Random(seed)
    brand = rng.choice(BRANDS)
    words = rng.sample(NAME_WORDS, n_products)
    # Each product type used about equally often; shuffled so the pairing of word and type varies by seed.
    types = [PRODUCT_TYPES[i % len(PRODUCT_TYPES)] for i in range(n_products)]
    rng.shuffle(types)
    columns = {
        "material": _balanced_pairs(rng, *_MATERIAL_PARTS, n_products),
        "colour": _balanced_pairs(rng, *_COLOUR_PARTS, n_products),
        "price": _prices(rng, n_products),
        "sizes": _size_ranges(rng, n_products),
        "care": _balanced_pairs(rng, *_CARE_PARTS, n_products),
        "warranty": [f"{m} months" for m in rng.sample(_WARRANTY_MONTHS, n_products)],
    }
    products = tuple(
        Product(name=f"{word} {kind}", values={attr: columns[attr][i] for attr in ATTRIBUTES})
        for i, (word, kind) in enumerate(zip(words, types, strict=True))
    )
    return Catalogue(brand=brand, products=products)


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _answer(attribute: str, product: Product) -> str:
    return ANSWER_TEMPLATES[attribute].format(product=product.name, value=product.values[attribute])


def _overview(catalogue: Catalogue, product: Product) -> dict[str, Any]:
    answer = OVERVIEW_ANSWER.format(product=product.name, brand=catalogue.brand, **product.values)
    return _chat(OVERVIEW_QUESTION.format(product=product.name), answer)


def _phrasings_per_attribute(train_templates_per_fact: int | Mapping[str, int]) -> dict[str, int]:
    """Normalise the count (one int for every attribute, or a count per attribute) and check its range."""
    counts = (
        dict.fromkeys(ATTRIBUTES, train_templates_per_fact)
        if isinstance(train_templates_per_fact, int)
        else dict(train_templates_per_fact)
    )
    if set(counts) != set(ATTRIBUTES):
        raise ConfigError(f"train_templates_per_fact needs a count for each of {list(ATTRIBUTES)}")
    most_train = min(map(len, TRAIN_TEMPLATES.values()))
    for attribute, count in counts.items():
        if not 1 <= count <= most_train:
            raise ConfigError(
                f"train_templates_per_fact must be 1..{most_train}, got {count} for {attribute!r}"
            )
    return counts


def _check_heldout(heldout_per_fact: int) -> None:
    most_heldout = min(map(len, HELDOUT_TEMPLATES.values()))
    if not 1 <= heldout_per_fact <= most_heldout:
        raise ConfigError(f"heldout_per_fact must be 1..{most_heldout}, got {heldout_per_fact}")


def generate_demo_data(
    out_dir: str | Path,
    seed: int = 0,
    n_products: int = 40,
    train_templates_per_fact: int | Mapping[str, int] = DEMO_PHRASINGS,
    heldout_per_fact: int = 1,
    include_overview: bool = False,
    replay: bool = False,
) -> DemoPaths:
    """Write the demo's data files into ``out_dir`` (each atomically); same seed -> byte-identical files.

    Files: ``train.jsonl`` (chat rows, shuffled: ``n_products * sum(phrasings per attribute)`` fact rows plus
    one "Tell me about" row per product when ``include_overview``, plus the general replay rows when
    ``replay``), ``retain.jsonl`` (the general rows as the run's ``data.retain`` set), ``validation.jsonl``
    (held-out phrasings,
    ``n_products * 6 * heldout_per_fact`` chat rows with ``product``/``attribute``/``value``),
    ``facts.jsonl`` (one row per fact with its first training phrasing), ``general.jsonl`` (general-knowledge
    questions with accepted answers) and ``general_text.txt`` (prose for perplexity).

    Args:
        out_dir: Directory to write into (created if missing).
        seed: Seed for the catalogue, the phrasings chosen per fact and the training order.
        n_products: Number of products (1 to :func:`max_products`).
        train_templates_per_fact: Training phrasings per (product, attribute), drawn without replacement:
            one count for all attributes or a count per attribute (default :data:`DEMO_PHRASINGS`); one of
            them opens with the product name (:data:`NAME_FIRST_TEMPLATES`), the rest name it mid-sentence.
        heldout_per_fact: Held-out phrasings per fact, drawn from templates never used in training.
        include_overview: Add one "Tell me about the {product}." row per product listing every attribute.
            Off by default: it cost 22 % more tokens, and the tuned model then answered held-out questions
            that start alike ("Tell me about the guarantee on ...") with the overview, cut off before the
            warranty — 24 of the 25 misses left after 5 epochs.

        replay: Also mix :data:`tunesmith.demo.replay.REPLAY_CHATS` (ordinary questions, ordinary answers)
            into ``train.jsonl``. The demo does not: it trains with them as ``data.retain`` (KL to the base
            on those rows), which kept more general answers at the same store accuracy (README).

    Returns:
        The paths written.

    Raises:
        ConfigError: A count is out of range.
    """
    phrasings = _phrasings_per_attribute(train_templates_per_fact)
    _check_heldout(heldout_per_fact)
    catalogue = build_catalogue(seed, n_products)
    # A separate stream for phrasings, so the catalogue for a seed does not depend on these counts.
    rng = random.Random(f"tunesmith-demo-phrasing-{seed}")
    train: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    facts: list[dict[str, Any]] = []
    for product in catalogue.products:
        for attr in ATTRIBUTES:
            answer = _answer(attr, product)
            # One name-first phrasing per fact, after the mid-sentence ones: facts.jsonl's "question" (the
            # first) then reads as a sentence.
            templates = rng.sample(TRAIN_TEMPLATES[attr], phrasings[attr] - 1)
            templates.append(rng.choice(NAME_FIRST_TEMPLATES[attr]))
            questions = [t.format(product=product.name) for t in templates]
            train.extend(_chat(q, answer) for q in questions)
            value = product.values[attr]
            facts.append(
                {
                    "product": product.name,
                    "attribute": attr,
                    "value": value,
                    "question": questions[0],
                    "answer": answer,
                }
            )
            for template in rng.sample(HELDOUT_TEMPLATES[attr], heldout_per_fact):
                row = _chat(template.format(product=product.name), answer)
                validation.append({**row, "product": product.name, "attribute": attr, "value": value})
        if include_overview:
            train.append(_overview(catalogue, product))
    general_chats = [_chat(q, a) for q, a in REPLAY_CHATS]
    if replay:
        train.extend(general_chats)
    rng.shuffle(train)

    out = Path(out_dir)
    paths = DemoPaths(
        train=out / "train.jsonl",
        validation=out / "validation.jsonl",
        facts=out / "facts.jsonl",
        general_questions=out / "general.jsonl",
        general_text=out / "general_text.txt",
        retain=out / "retain.jsonl",
    )
    write_jsonl_atomic(paths.train, train)
    write_jsonl_atomic(paths.retain, general_chats)
    write_jsonl_atomic(paths.validation, validation)
    write_jsonl_atomic(paths.facts, facts)
    write_jsonl_atomic(
        paths.general_questions, [{"question": q, "answers": list(a)} for q, a in GENERAL_QUESTIONS]
    )
    write_text_atomic(paths.general_text, GENERAL_TEXT)
    return paths
