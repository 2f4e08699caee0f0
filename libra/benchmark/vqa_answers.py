"""VQA answer normalisation, as the official VQA evaluation (GT-Vision-Lab/VQA ``vqaEval.py``)
and the EvalAI answer processor (lmms-eval, LLaVA) define it.

Every quirk of the reference code is kept on purpose, because scores must match it exactly:
the period regex removes at most 32 periods, a digit-comma-digit anywhere switches *every*
punctuation character from "replace by space" to "delete", and the capitalised contraction keys
can never match after lower-casing. Pure Python; imports nothing of libra.
"""

from __future__ import annotations

import re
from functools import lru_cache

# The official list; note what is absent (apostrophe, colon, #, $, %, &, *, non-ASCII).
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_PUNCTUATION_SET = frozenset(PUNCTUATION)

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# Apostrophe-less spellings mapped back to the contraction. A fact of the scoring definition,
# quirks included: the capitalised keys are dead after lower-casing, and "somebody'd" maps
# *to* "somebodyd".
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip

# Official: "(\d)(\,)(\d)"; EvalAI: "(?<=\d)(\,)+(?=\d)". Both fire exactly when some digit is
# followed by one comma and a digit, or (EvalAI only) by a run of commas and a digit.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_DIGIT_COMMAS_DIGIT = re.compile(r"\d,+\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": the look-behind was mistyped as a look-ahead for
# the literal "<=" + digit, which can never block a lone ".", so the effective rule is
# "a period not followed by a digit". ``re.UNICODE`` (32) lands in the ``count`` slot.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_MAX_PERIODS_REMOVED = 32

_DELETE_ALL = str.maketrans(dict.fromkeys(PUNCTUATION, None))


def _process_punctuation(text: str, comma_rule: re.Pattern) -> str:
    if not _PUNCTUATION_SET.isdisjoint(text):
        if comma_rule.search(text):
            text = text.translate(_DELETE_ALL)
        else:
            # Each character's fate is decided on the original text, so one translate table
            # built up front is equivalent to the reference's sequential replaces.
            table = {}
            for p in PUNCTUATION:
                if p in text:
                    table[ord(p)] = None if (p + " " in text or " " + p in text) else " "
            text = text.translate(table)
    if "." in text:
        text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text, count=_MAX_PERIODS_REMOVED)
    return text


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``."""
    return _process_punctuation(text, _DIGIT_COMMA_DIGIT)


def process_punctuation_evalai(text: str) -> str:
    """EvalAI's ``process_punctuation``: like the official one, but a run of commas between
    digits also switches to deletion."""
    return _process_punctuation(text, _DIGIT_COMMAS_DIGIT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, split on whitespace, number words to
    digits, drop articles, restore contractions, join with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def clean_whitespace(text: str) -> str:
    """The official first step: only ``\\n`` and ``\\t`` become spaces, then ``strip()``."""
    return text.replace("\n", " ").replace("\t", " ").strip()


@lru_cache(maxsize=1 << 18)
def normalize_official(text: str) -> str:
    """Punctuation then digit/article processing (the text must already be cleaned)."""
    return process_digit_article(process_punctuation(text))


@lru_cache(maxsize=1 << 18)
def normalize_evalai_steps(text: str) -> str:
    """EvalAI's ``process_punctuation`` then ``process_digit_article``, without its tokenizer."""
    return process_digit_article(process_punctuation_evalai(text))


@lru_cache(maxsize=1 << 18)
def normalize_evalai(text: str) -> str:
    """``EvalAIAnswerProcessor()(text)``: its word tokenizer (lower-case, delete every ``,`` and
    ``?``, split off ``'s``), whitespace cleanup, then both processing steps."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_evalai_steps(clean_whitespace(text))


def _unchanged(text: str) -> str:
    return text


# How a benchmark task normalises a model's answer before the scorer sees it (and before it goes into
# a submission file). The official scorer normalises only when the ten human answers differ, so a
# raw "Yes" scores 0 against a unanimous "yes"; published VQAv2 / VizWiz / OK-VQA / TextVQA numbers
# are computed on answers passed through the EvalAI answer processor first (LLaVA's submission
# converters, the m4c evaluator). "none" suits scorers that normalise the answer themselves.
ANSWER_NORMALIZATION = {"evalai": normalize_evalai, "none": _unchanged}
