"""Caption tokenisation as pycocoevalcap does it: Stanford PTBTokenizer (CoreNLP 3.4.1,
``-preserveLines -lowerCase``) followed by the wrapper's punctuation-token removal.

``tokenize`` is a rule-based pure-Python emulation of the Java lexer: it reproduces every caption
of the benchmark corpora exactly (see tests/benchmark). ``tokenize_java`` runs the real jar shipped
inside pycocoevalcap, for exotic text or as a cross-check. Both return, per caption, the string
the scorers see: tokens joined by single spaces.

One deliberate divergence from the reference wrapper: ``\\r``, ``\\x0b``, ``\\x0c``, U+2028 and
U+2029 end a line in Java, which silently shifts every later caption by one in pycocoevalcap. Both
paths here turn them into spaces instead of copying that bug.

Pure Python; imports nothing of libra.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from libra.benchmark.java import java_command, pycocoevalcap_file, utf8_environment

# Tokens the pycocoevalcap wrapper drops after tokenising. Its list also holds -LRB- etc. in
# upper case, which never match after -lowerCase, so brackets survive as -lrb- ...
REMOVED_TOKENS = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\u2028\u2029", " "))

# Characters the lexer rewrites before tokenising (currency, fractions, entities).
_REWRITES = {
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "£": "#",
    "€": "$",
    "½": " 1/2",
    "¼": " 1/4",
    "¾": " 3/4",
    "⅓": " 1/3",
    "⅔": " 2/3",
    "…": " ... ",
    "—": " -- ",
    "–": " -- ",
    "\u200b": " ",  # zero-width space separates tokens
    "\u0085": " ",
}
_REWRITE_RE = re.compile("|".join(re.escape(k) for k in _REWRITES))

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

# Abbreviations that keep their period (lower-case, without the period).
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "st", "ave", "jr", "sr", "prof", "gen", "rep", "sen", "gov", "lt",
        "col", "sgt", "capt", "cpl", "mt", "ft", "rev", "hon", "messrs", "vs", "etc", "inc", "corp",
        "ltd", "bros", "jan", "feb", "apr", "aug", "sept", "oct", "nov", "dec", "blvd",
    }
)  # fmt: skip
# Quote-like characters that PTB turns into `` '' ` ' (all removed afterwards).
_QUOTES = '"“”„‟«»‹›「」『』`‘‚‛'
_CLITICS = ("'s", "'re", "'ll", "'d", "'m", "'ve")
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "lemme": ("lem", "me"),
    "gimme": ("gim", "me"),
}

_L = r"[^\W_]"  # a letter or digit
_M = r"[\u0300-\u036f]"  # combining accents stay attached to their letter
_WORD_CHAR = rf"(?:{_L}{_M}*)"
_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<fraction>(?:\d{1,4}[ \xa0-])?\d{1,4}/\d{1,4}(?![\w/]))
  | (?P<sgml></?[A-Za-z][A-Za-z0-9]*>)
  | (?P<url>(?:https?://|www\.)[\w\-./~%?=&#:]*[\w/])
  | (?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<handle>[@#][^\W\d_]\w*)
  | (?P<signed>[+-]\d+(?:[.,]\d+)*)
  | (?P<decade>['’]\d0s)
  | (?P<n>['’][nN]['’](?!\w))
  | (?P<yall>[Yy]['’](?=all\b))
  | (?P<word>§+(?:(?:[-/.]|(?<=\d)[,:](?=\d)|(?<=[A-Z])&(?=[A-Z])|['’](?=[^\W_]))§+)*)
  | (?P<dots>\.\.+)
  | (?P<runs>[?!]{2,})
  | (?P<dashes>-{2,})
  | (?P<other>.)
    """.replace("§", _WORD_CHAR),
    re.VERBOSE,
)
_ACRONYM = re.compile(r"^(?:[^\W\d_]{1,2}\.)+[^\W\d_]$")
# "No." keeps its period only before a number ("No. 9").
_NUMBER_AHEAD = re.compile(r"\s*\d")
# A one-letter initial ("b.", "D.") keeps its period unless a capitalised sentence starter
# follows; then the lexer reads a sentence end. The words were found by probing the jar.
_CAPITALISED_WORD_AHEAD = re.compile(r"\s*([A-Z][A-Za-z]*)(?=\s|$)")
_SENTENCE_STARTERS = frozenset(
    {
        "a", "an", "the", "this", "that", "these", "there", "one", "some", "many", "in", "at",
        "it", "he", "she", "they", "we", "you", "our", "their", "her", "but", "if", "when",
        "while", "what", "as", "after", "here", "now", "then", "so", "other", "such", "since",
        "yet", "however", "once", "last",
    }
)  # fmt: skip


def _sentence_starts(ahead: str) -> bool:
    match = _CAPITALISED_WORD_AHEAD.match(ahead)
    return match is not None and match.group(1).lower() in _SENTENCE_STARTERS


_NT = re.compile(r"^(.*[^\W_])(n['’]t)$", re.IGNORECASE)


def _split_word(word: str) -> list[str]:
    """Split clitics and contractions off a word chunk (``don't`` -> ``do n't``)."""
    lower = word.lower()
    if lower in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[lower])
    normal = lower.replace("’", "'")
    for clitic in _CLITICS:
        if normal.endswith(clitic) and len(normal) > len(clitic):
            return [*_split_word(word[: -len(clitic)]), clitic]  # "shouldn't've"
    match = _NT.match(word)
    if match:
        return [match.group(1), "n't"]
    return [word]


def _word_tokens(word: str, text: str, end: int, following: str) -> tuple[list[str], int]:
    """Tokens for a word chunk ending at ``end``; a following period joins abbreviations.

    The Java lexer looks past the end of a caption into the next line of its input, so the
    decision for a final period also reads ``following`` (the next caption of the batch).
    """
    if end < len(text) and text[end] == "." and not text.startswith("..", end):
        base = word.lower()
        ahead = text[end + 1 :] + "\n" + following[:40].translate(_LINE_BREAKS)
        if (
            base in _ABBREVIATIONS
            or _ACRONYM.match(base)
            or (base == "no" and _NUMBER_AHEAD.match(ahead))
            or (len(base) == 1 and base.isalpha() and not _sentence_starts(ahead))
        ):
            return [word + "."], end + 1
    return _split_word(word), end


def _is_symbol(ch: str) -> bool:
    """Characters the Java lexer keeps as one-character tokens (emoji etc. are dropped)."""
    return ord(ch) < 0x2000 or 0x2030 <= ord(ch) <= 0x2BFF and ch not in "\u2764"


# Most captions are plain words, spaces, commas before a space and an optional final period;
# they take a split-based path that gives the same result as the full lexer, several times faster.
_PLAIN = re.compile(r"(?:[A-Za-z0-9 ]|,(?= ))*(?<! )(?: ?\.)?")


def _tokenize_plain(text: str) -> str | None:
    words = text.replace(",", " ").split()
    if words and text.endswith("."):
        last = words[-1][:-1]
        if last.lower() in _ABBREVIATIONS or len(last) == 1 or last.lower() == "no":
            return None  # "st.", "b." and "no." may keep their period: leave it to the lexer
        words[-1] = last
        if not last:
            words.pop()
    return " ".join(words).lower()


def tokenize_one(caption: str, following: str = "") -> str:
    """One caption -> the string the scorers see (lower-case tokens joined by spaces).

    ``following`` is the next caption of the same tokenizer call, which the Java lexer peeks at.
    """
    stripped = caption.strip(" ")
    if _PLAIN.fullmatch(stripped):
        plain = _tokenize_plain(stripped)
        if plain is not None:
            return plain
    text = _REWRITE_RE.sub(lambda m: _REWRITES[m.group(0)], caption.translate(_LINE_BREAKS))
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        kind, value, pos = match.lastgroup, match.group(0), match.end()
        if kind == "space" or kind == "dots" or kind == "dashes":
            continue
        if kind == "word":
            words, pos = _word_tokens(value, text, pos, following)
            tokens.extend(words)
        elif kind == "fraction":
            tokens.append(re.sub(r"[ -]", "\xa0", value))
        elif kind == "other":
            if value in _BRACKETS:
                tokens.append(_BRACKETS[value])
            elif value in _QUOTES or value in "'’":
                continue
            elif _is_symbol(value) and not value.isspace():
                tokens.append(value)
        else:
            tokens.append(value)
    return " ".join(t for t in (t.lower() for t in tokens) if t not in REMOVED_TOKENS)


def tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenise many captions with the pure-Python emulation, as one call of the Java tokenizer
    would (each caption's last period may depend on the start of the next caption)."""
    following = [*captions[1:], ""]
    return [tokenize_one(c, f) for c, f in zip(captions, following)]


def tokenize_java(captions: Sequence[str], timeout_s: float = 600) -> list[str]:
    """Tokenise with the real Stanford PTBTokenizer from the pycocoevalcap package.

    Runs in a temporary directory (pycocoevalcap writes into its own site-packages folder) with
    UTF-8 forced, whatever the caller's locale.
    """
    jar = pycocoevalcap_file("tokenizer/stanford-corenlp-3.4.1.jar")
    lines = [c.translate(_LINE_BREAKS) for c in captions]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        cmd = java_command(
            ["-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        )
        out = subprocess.run(
            [*cmd, str(path)], capture_output=True, check=True, timeout=timeout_s, env=utf8_environment()
        )
    output = out.stdout.decode("utf-8").split("\n")
    if len(output) < len(lines):
        raise RuntimeError(f"PTBTokenizer returned {len(output)} lines for {len(lines)} captions")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in REMOVED_TOKENS)
        for line in output[: len(lines)]
    ]
