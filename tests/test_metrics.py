import json
import math
import sys

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.metrics import (
    bleu,
    chrf,
    comet,
    normalize_text,
    real_time_factor,
    score,
    tokens_per_second,
    wer,
    wer_per_utterance,
)

# ---------------------------------------------------------------- normaliser


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello, World!", "hello world"),
        ("  spaced\tout\n words ", "spaced out words"),
        ("[noise] hello (laughs) there", "hello there"),
        ("Don't stop, it’s fine", "do not stop it is fine"),  # contractions expanded, curly apostrophe too
        ("'quoted' dogs'", "quoted dogs"),
        ("Café naïve résumé", "cafe naive resume"),
        ("uh I um think hmm", "i think"),
        ("ＦＵＬＬ width", "full width"),
        ("𝐓he fox", "the fox"),  # NFKC first: mathematical letters come out lower-case
        ("3.5 and 1,000 and 50%", "3.5 and 1000 and 50%"),
        ("end. Next", "end next"),
        ("The colour of Mr Smith", "the color of mister smith"),  # American spelling, titles spelt out
    ],
)
def test_english_rules(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "words, digits",
    [
        ("twenty one", "21"),
        ("twenty-one", "21"),
        ("one hundred and five", "105"),
        ("one hundred five", "105"),
        ("three point five", "3.5"),
        ("zero point two five", "0.25"),
        ("two thousand and twenty four", "2024"),
        ("nineteen hundred and eighty four", "1984"),
        ("one million two hundred thousand", "1200000"),
        ("seven", "7"),
        ("twenty first", "21st"),
        ("one hundred and twelfth", "112th"),
        ("third", "3rd"),
        ("five percent", "5%"),
        ("two dollars", "$2"),
    ],
)
def test_number_words_equal_digits(words, digits):
    assert normalize_text(words) == normalize_text(digits)


_WHISPER_SAMPLES = [
    "Mr. O'Neil won't pay $3.50 for the colour TV, will he?",
    "In nineteen ninety-nine we'd sold twenty-one thousand units (approx.).",
    "[MUSIC] um, the 2nd item costs twelve pounds fifty",
    "Let's meet at 10:30 - it's the fourth of July!",
]


@pytest.mark.parametrize("text", _WHISPER_SAMPLES)
def test_english_is_whispers_normaliser(text):
    import importlib.resources
    import json

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads((importlib.resources.files("whisper_normalizer") / "normalizers" / "english.json").read_text())
    assert normalize_text(text) == " ".join(EnglishTextNormalizer(mapping)(text).split())


def test_spelling_map_is_openai_whispers():
    import hashlib
    import importlib.resources

    data = (importlib.resources.files("whisper_normalizer") / "normalizers" / "english.json").read_bytes()
    # openai/whisper whisper/normalizers/english.json (1,739 British -> American spellings)
    assert hashlib.sha256(data).hexdigest() == "6607f948be9824d2e1b2fa2223cd94c06c45afa4e05ea0e3d5e1f2bdffde2465"


def test_basic_normaliser_keeps_accents_and_number_words():
    out = normalize_text("¿Qué tal, Señor? [ruido] l’homme", lang="es")
    assert out == "qué tal señor l'homme"
    assert normalize_text("Zwanzig, EINS!", lang="de") == "zwanzig eins"
    assert normalize_text("twenty one", lang="fr") == "twenty one"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_basic_normaliser_is_idempotent(text):
    once = normalize_text(text, "de")
    assert normalize_text(once, "de") == once


_NUMBERISH = st.lists(
    st.sampled_from(
        "one two twelve twenty hundred thousand and point first zero uh , . % $ 3 1,5 [x] dollars".split()
    )
    | st.text(alphabet="abc' -.,0123", max_size=6)
).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.text() | _NUMBERISH)
def test_english_normaliser_output_is_lower_case_single_spaced(text):
    # Whisper's normaliser is not idempotent ("2 1" -> "2 one" -> "21"), so no such property here
    out = normalize_text(text)
    assert out == " ".join(out.split()) and out == out.lower()


# ---------------------------------------------------------------- WER


def test_wer_one_deletion():
    out = wer(["the cat sat on the mat"], ["the cat sat on mat"])
    assert out["wer"] == pytest.approx(1 / 6)
    assert out["wer_percent"] == pytest.approx(100 / 6)
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (0, 1, 0, 5)
    assert out["ref_words"] == 6 and out["hyp_words"] == 5 and out["num_utterances"] == 1


def test_wer_corpus_counts_all_kinds():
    # utt 1: 1 substitution (mat -> hat); utt 2: 1 insertion (very); 7 reference words
    out = wer(["the cat sat on the mat", "good"], ["the cat sat on the hat", "very good"])
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (1, 0, 1)
    assert out["wer"] == pytest.approx(2 / 7)


def test_wer_ignores_case_punctuation_and_number_form():
    refs = ["Hello, World! I have twenty-one cats."]
    hyps = ["hello world i have 21 cats"]
    assert wer(refs, hyps)["wer"] == 0.0
    assert wer(refs, hyps, normalize=False)["wer"] > 0.0


def test_wer_empty_reference_counts_insertions():
    out = wer(["a b", "[noise]"], ["a b", "c d"])
    assert out["insertions"] == 2 and out["ref_words"] == 2
    assert out["wer"] == pytest.approx(1.0)


def test_wer_all_empty():
    assert wer([], [])["wer"] == 0.0
    assert wer([""], [""])["wer"] == 0.0
    assert wer(["(laughs)"], ["oh"])["wer"] == math.inf


def test_wer_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_wer_per_utterance():
    refs = ["the cat sat on the mat", "a b", "", ""]
    hyps = ["the cat sat on mat", "a b", "", "x"]
    rates = wer_per_utterance(refs, hyps)
    assert rates == pytest.approx([1 / 6, 0.0, 0.0, math.inf])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(), max_size=5))
def test_wer_of_identical_text_is_zero(texts):
    assert wer(texts, texts)["wer"] == 0.0
    assert all(r == 0.0 for r in wer_per_utterance(texts, texts))


# ---------------------------------------------------------------- BLEU, chrF

REFS = ["The cat is on the mat.", "There is a dog in the garden today."]
HYPS = ["The cat sat on the mat.", "A dog is in the garden."]


def test_bleu_matches_sacrebleu():
    out = bleu(REFS, HYPS)
    assert out["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert "tok:13a" in out["signature"] and "nrefs:1" in out["signature"]
    assert 0.0 < out["score"] < 100.0


def test_bleu_perfect_match_is_100():
    assert bleu(REFS, REFS)["score"] == pytest.approx(100.0)


def test_bleu_tokenizer_per_language():
    zh = bleu(["我们今天去公园。"], ["我们今天去公园。"], tgt_lang="zh")
    assert zh["tokenize"] == "zh" and "tok:zh" in zh["signature"]
    assert zh["score"] == pytest.approx(100.0)
    ja = bleu(["今日は晴れです"], ["今日は雨です"], tgt_lang="ja")
    assert ja["tokenize"] in ("ja-mecab", "char")
    if ja["tokenize"] == "char":
        assert "sacrebleu[ja]" in ja["note"]


def test_chrf_matches_sacrebleu():
    out = chrf(REFS, HYPS)
    assert out["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "nc:6" in out["signature"]
    assert chrf(REFS, REFS)["score"] == pytest.approx(100.0)


@pytest.mark.parametrize("metric", [bleu, chrf])
def test_corpus_metrics_reject_empty_and_mismatched(metric):
    with pytest.raises(ValueError, match="no segments"):
        metric([], [])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        metric(REFS, HYPS[:1])


# ---------------------------------------------------------------- COMET, score


def test_comet_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "comet", None)  # makes `import comet` raise ImportError
    with pytest.raises(ImportError, match=r"speechwire\[comet\]"):
        comet(["src"], ["ref"], ["hyp"], model_path="Unbabel/wmt22-comet-da")


def test_score_asr_and_st_are_json_serialisable():
    asr = score("asr", ["the cat sat on the mat"], ["the cat sat on mat"])
    assert asr["task"] == "asr" and asr["wer"] == pytest.approx(1 / 6)
    st_ = score("st", REFS, HYPS, tgt_lang="de")
    assert st_["bleu"] == pytest.approx(bleu(REFS, HYPS)["score"])
    assert st_["chrf"] == pytest.approx(chrf(REFS, HYPS)["score"])
    assert "comet" not in st_
    for out in (asr, st_):
        assert json.loads(json.dumps(out)) == out


def test_score_errors():
    with pytest.raises(ValueError, match="unknown task 'mt'; available: asr, st"):
        score("mt", REFS, HYPS)
    with pytest.raises(ValueError, match="srcs"):
        score("st", REFS, HYPS, comet_model="Unbabel/wmt22-comet-da")


# ---------------------------------------------------------------- speed


def test_real_time_factor_and_tokens_per_second():
    assert real_time_factor(2.0, 10.0) == pytest.approx(0.2)
    assert tokens_per_second(50, 2.0) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="audio_seconds=0"):
        real_time_factor(1.0, 0.0)
    with pytest.raises(ValueError, match="seconds=0"):
        tokens_per_second(10, 0)


def test_edit_distance_counts_word_edits_and_an_empty_reference():
    from speechwire.metrics import edit_distance

    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert edit_distance(["a", "b"], []) == 2 and edit_distance([], ["a", "b"]) == 2 and edit_distance([], []) == 0
