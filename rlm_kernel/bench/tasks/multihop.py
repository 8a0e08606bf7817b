"""Multi-hop over documents (BrowseComp-Plus-like): the answer links 2 or 3 facts from
different documents of a generated corpus.

The corpus describes a consistent invented world: companies (each founded by one person),
people (each born in one city) and cities (each in one country), one document per entity with
its fact among filler prose. A question names one company and asks for the city its founder was
born in (2 hops) or that city's country (3 hops); no single document holds the answer. Names
are invented, so no model knows them beforehand.
"""

from __future__ import annotations

import random

from ._common import CHARS_PER_TOKEN, Instance
from ._text import filler

ABOUT = "2-3 linked facts across hundreds to thousands of generated documents (exact match)"
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "s", "l", "th", "x")
DOC_CHARS = 900  # a document's size on average


def _names(rng: random.Random, k: int, syllables: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        name = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        ).capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _document(rng: random.Random, title: str, fact: str) -> str:
    body = filler(rng, rng.randint(DOC_CHARS // 2, DOC_CHARS * 3 // 2))
    body.insert(rng.randrange(len(body) + 1), fact)
    return f"Title: {title}\n\n" + " ".join(body)


def generate(rng: random.Random, size_tokens: int, index: int) -> Instance:
    """One corpus of about ``size_tokens`` tokens and a question that needs 2 or 3 hops."""
    n_docs = max(12, size_tokens * CHARS_PER_TOKEN // (DOC_CHARS + 60))
    n_companies = max(3, n_docs * 3 // 10)
    n_cities = max(3, n_docs * 3 // 10)
    n_people = max(n_companies, n_docs - n_companies - n_cities)
    taken: set[str] = set()
    countries = _names(rng, 12, 3, taken)
    cities = _names(rng, n_cities, 2, taken)
    people = [
        f"{a} {b}"
        for a, b in zip(
            _names(rng, n_people, 2, taken), _names(rng, n_people, 3, taken), strict=True
        )
    ]
    companies = [
        f"{n} {rng.choice(('Works', 'Labs', 'Trading', 'Group'))}"
        for n in _names(rng, n_companies, 2, taken)
    ]
    country_of = {c: rng.choice(countries) for c in cities}
    city_of = {p: rng.choice(cities) for p in people}
    founder_of = dict(zip(companies, rng.sample(people, n_companies), strict=True))
    years = {c: rng.randint(1850, 2015) for c in companies}
    docs = (
        [_document(rng, c, f"{c} was founded in {years[c]} by {founder_of[c]}.") for c in companies]
        + [_document(rng, p, f"{p} was born in the city of {city_of[p]}.") for p in people]
        + [_document(rng, c, f"{c} is a city in {country_of[c]}.") for c in cities]
    )
    rng.shuffle(docs)
    company = rng.choice(companies)
    founder = founder_of[company]
    city = city_of[founder]
    if index % 2 == 0:
        hops, gold = 3, country_of[city]
        question = f"In which country was the founder of {company} born?"
    else:
        hops, gold = 2, city
        question = f"In which city was the founder of {company} born?"
    return Instance(
        id="",
        task="multihop",
        size_tokens=size_tokens,
        context=docs,
        question=f"The context is a list of documents. {question} Answer with the name alone.",
        gold=gold,
        scorer="exact",
        metadata={
            "hops": hops,
            "documents": len(docs),
            "chain": [company, founder, city] + ([gold] if hops == 3 else []),
        },
    )
