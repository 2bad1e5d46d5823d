"""Text → Piper phoneme ids, with the ``espeak-ng`` program as the grapheme-to-phoneme step.

Piper voices are trained on espeak-ng IPA phonemes with the clause punctuation kept
(``həlˈoʊ wˈɜːld, ðɪs ɪz ɐ tˈɛst.``), one sentence per utterance, and ids laid out as
``^ _ p1 _ p2 _ … pn _ $`` (BOS, then every phoneme followed by the pad symbol, then EOS).
The espeak-ng command line drops punctuation, so clauses are phonemized one by one and their
punctuation re-attached here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass

from ferrum.errors import FerrumError, UnsupportedFeatureError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE = re.compile(r"([^,;:.!?]+)([,;:.!?]*)")
BOS, EOS, PAD = "^", "$", "_"


@dataclass
class Utterance:
    """One sentence: its phonemes (for diagnostics) and the ids the voice takes."""

    phonemes: str
    ids: list[int]


class EspeakPhonemizer:
    """Phonemizes with ``espeak-ng -q --ipa -v <voice>`` and maps phonemes to a voice's ids."""

    def __init__(self, voice: str, phoneme_id_map: dict[str, list[int]], program: str = "espeak-ng"):
        path = shutil.which(program)
        if path is None:
            raise UnsupportedFeatureError(
                "speech synthesis needs the espeak-ng program for phonemes (apt-get install espeak-ng)"
            )
        self.program, self.voice, self.id_map = path, voice, phoneme_id_map
        for symbol in (BOS, EOS, PAD):
            if symbol not in phoneme_id_map:
                raise FerrumError(f"the voice's phoneme map has no {symbol!r} symbol")

    def _espeak(self, text: str) -> str:
        run = subprocess.run(
            [self.program, "-q", "--ipa", "-v", self.voice, "--stdin"],
            input=text, capture_output=True, text=True, timeout=60,
        )
        if run.returncode != 0:
            raise FerrumError(f"espeak-ng failed: {run.stderr.strip()[:500]}")
        return " ".join(run.stdout.split())

    def phonemize(self, sentence: str) -> str:
        """IPA of one sentence, clause by clause, with each clause's punctuation kept."""
        parts = []
        for words, punct in _CLAUSE.findall(sentence):
            ipa = self._espeak(words) if words.strip() else ""
            mark = punct[:1] if punct[:1] in self.id_map else ""
            if ipa or mark:
                parts.append(ipa + mark)
        return " ".join(parts)

    def ids(self, phonemes: str) -> list[int]:
        out = list(self.id_map[BOS]) + list(self.id_map[PAD])
        for symbol in unicodedata.normalize("NFD", phonemes):
            if symbol in self.id_map:  # as Piper: symbols the voice never saw are dropped
                out += self.id_map[symbol] + self.id_map[PAD]
        return out + list(self.id_map[EOS])

    def utterances(self, text: str) -> list[Utterance]:
        """One utterance per sentence that has something to say."""
        result = []
        for sentence in _SENTENCE_END.split(" ".join(text.split())):
            phonemes = self.phonemize(sentence)
            if phonemes.strip():
                result.append(Utterance(phonemes, self.ids(phonemes)))
        return result
