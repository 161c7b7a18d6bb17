"""T5 and Q-Former tokenizers: nano training, box-friendly splitting, save/load, hub layouts."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, T5Tokenizer

from lion_ros.boxes import DEFAULT_CODEC, PhraseSpan
from lion_ros.prompts import build_t5_prompt, caption_prompt, find_all_prompt, rec_prompt
from lion_ros.tokenization import LionTokenizers, TokenizerConfig, train_nano_tokenizers

T5_VOCAB = 600
QFORMER_VOCAB = 400
WORDS = [
    "man", "woman", "dog", "cat", "cup", "bowl", "table", "chair", "red", "blue", "green", "small", "large", "old",
    "young", "wooden", "kitchen", "street", "car", "bus", "kite", "tree", "grass", "sky", "window", "door", "robot",
    "arm", "box", "shelf", "bottle", "person", "holding", "sitting", "standing", "walking", "running", "near",
    "behind", "under", "left", "right", "white", "black",
]


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    texts = []
    for i in range(n):
        noun = " ".join(rng.sample(WORDS, 2))
        box = [round(rng.random(), 3) for _ in range(4)]
        caption = " ".join(rng.choice(WORDS) for _ in range(8))
        texts += [
            build_t5_prompt(rec_prompt(noun, i), rng.sample(WORDS, 3)),
            DEFAULT_CODEC.format_answer([box]),
            caption_prompt(i) + " " + caption.capitalize() + ".",
            find_all_prompt(noun, i),
        ]
    return texts


@pytest.fixture(scope="module")
def toks() -> LionTokenizers:
    return train_nano_tokenizers(_corpus(), T5_VOCAB, QFORMER_VOCAB)


@pytest.fixture(scope="module")
def saved(toks: LionTokenizers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    toks.save(directory)
    return directory


# --- T5-like ------------------------------------------------------------------------------


def test_t5_special_ids_follow_t5(toks: LionTokenizers) -> None:
    t5 = toks.t5
    size = len(t5)
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.convert_tokens_to_ids("<extra_id_0>") == size - 1 == toks.tag_token_id
    assert t5.convert_tokens_to_ids("<extra_id_99>") == size - 100
    assert [t5.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)] == list(
        range(size - 1, size - 101, -1)
    )
    assert 103 + 10 < size <= T5_VOCAB  # learnt something, within the requested size


def test_t5_learns_word_pieces(toks: LionTokenizers) -> None:
    tokens = toks.t5.tokenize("the red cup on the wooden table")
    assert len(tokens) < len("the red cup on the wooden table") / 2


def test_t5_appends_eos_and_keeps_the_tag_token(toks: LionTokenizers) -> None:
    ids = toks.t5(build_t5_prompt("Where is the cup?", ["cup"])).input_ids
    assert ids[-1] == toks.t5.eos_token_id
    assert ids.count(toks.tag_token_id) == 1


def test_digits_and_box_punctuation_are_single_tokens(toks: LionTokenizers) -> None:
    tokens = toks.t5.tokenize("Answer: [0.440,0.060;0.650,0.367]")
    box_tokens = tokens[tokens.index("[") :]
    assert box_tokens == list("[0.440,0.060;0.650,0.367]")
    assert ":" in tokens
    # Every coordinate is spelled digit by digit, whatever digits surround it.
    assert toks.t5.tokenize("[0.111,0.9]") == ["\u2581", *"[0.111,0.9]"]
    assert len(set(toks.t5("[0.111,0.111]", add_special_tokens=False).input_ids)) == 7


def test_unknown_characters_map_to_unk(toks: LionTokenizers) -> None:
    assert toks.t5("€", add_special_tokens=False).input_ids[-1] == toks.t5.unk_token_id


_box = st.tuples(*[st.floats(0, 1, allow_nan=False)] * 4)


@settings(max_examples=80, deadline=None)
@given(st.lists(_box, min_size=1, max_size=4), st.sampled_from(WORDS), st.sampled_from(WORDS))
def test_box_strings_round_trip_exactly(
    toks: LionTokenizers, boxes: list, first: str, second: str
) -> None:
    answer = DEFAULT_CODEC.format_answer(boxes)
    caption = f"a {first} next to the {second}."
    grounded = DEFAULT_CODEC.format_grounded_caption(
        caption, [PhraseSpan(2, 2 + len(first), boxes[:1]), PhraseSpan(19, 19 + len(second), boxes)]
    )
    for text in (answer, grounded, DEFAULT_CODEC.format_boxes(boxes)):
        ids = toks.t5(text).input_ids
        assert toks.t5.decode(ids, skip_special_tokens=True) == text


def test_prompt_truncation_keeps_the_question(toks: LionTokenizers) -> None:
    prompt = build_t5_prompt("Where is the cup?", WORDS * 3)
    ids = toks.t5(prompt, truncation=True, max_length=12).input_ids
    assert len(ids) == 12
    assert toks.t5.decode(ids, skip_special_tokens=True).endswith("Where is the cup?")


# --- Q-Former (BERT-like) -----------------------------------------------------------------


def test_qformer_special_ids(toks: LionTokenizers) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    ids = toks.qformer.convert_tokens_to_ids(specials)
    assert ids == [0, 1, 2, 3, 4, 5]
    assert toks.qformer.bos_token == "[DEC]" and toks.qformer_bos_id == 5
    assert toks.qformer.pad_token_id == 0


def test_qformer_is_lowercase_with_cls_sep_and_split_digits(toks: LionTokenizers) -> None:
    ids = toks.qformer("Locate the RED Cup [0.25]?").input_ids
    tokens = toks.qformer.convert_ids_to_tokens(ids)
    assert tokens == ["[CLS]", "locate", "the", "red", "cup", *"[0.25]?", "[SEP]"]


def test_qformer_truncates_from_the_left_at_128(toks: LionTokenizers) -> None:
    text = " ".join(WORDS * 10) + " locate the red kite"
    ids = toks.qformer(text, truncation=True).input_ids
    assert len(ids) == 128
    tokens = toks.qformer.convert_ids_to_tokens(ids)
    assert tokens[-5:] == ["locate", "the", "red", "kite", "[SEP]"]


# --- save / load --------------------------------------------------------------------------


def test_save_load_round_trip(toks: LionTokenizers, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["qformer_tokenizer", "tokenizer"]
    loaded = LionTokenizers.load(saved)
    assert isinstance(loaded.t5, PreTrainedTokenizerFast)
    assert isinstance(loaded.qformer, PreTrainedTokenizerFast)
    texts = [*_corpus(5), "Answer: [0.1,0.2,0.3,0.4]", "ünïcode €"]
    for text in texts:
        assert loaded.t5(text).input_ids == toks.t5(text).input_ids
        assert loaded.qformer(text).input_ids == toks.qformer(text).input_ids
    assert loaded.tag_token_id == toks.tag_token_id
    assert loaded.qformer_bos_id == toks.qformer_bos_id
    assert (loaded.t5.truncation_side, loaded.qformer.truncation_side) == ("left", "left")
    assert loaded.qformer.model_max_length == 128


def test_load_applies_the_config(saved: Path) -> None:
    config = TokenizerConfig(qformer_max_length=64, t5_truncation_side="right")
    loaded = LionTokenizers.load(saved, config)
    assert loaded.qformer.model_max_length == 64
    assert loaded.t5.truncation_side == "right"


def test_missing_directories_raise(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        LionTokenizers.load(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        LionTokenizers.load(tmp_path)
    only_t5 = tmp_path / "only_t5"
    only_t5.mkdir()
    (only_t5 / "tokenizer").symlink_to(saved / "tokenizer")
    with pytest.raises(FileNotFoundError, match="qformer_tokenizer"):
        LionTokenizers.load(only_t5)


def test_a_tokenizer_without_sentinels_is_rejected(tmp_path: Path, saved: Path) -> None:
    plain = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0))
    plain.pre_tokenizer = pre_tokenizers.Metaspace()
    PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="<unk>").save_pretrained(
        tmp_path / "tokenizer"
    )
    (tmp_path / "qformer_tokenizer").symlink_to(saved / "qformer_tokenizer")
    with pytest.raises(ValueError, match="extra_id_0"):
        LionTokenizers.load(tmp_path)


def test_loads_hub_style_flant5_and_bert_directories(tmp_path: Path) -> None:
    # flan-t5-*: tokenizer_config.json names T5Tokenizer; bert-base-uncased: only vocab.txt
    # and a tokenizer_config.json without a class, and no [DEC] (LION adds it).
    pieces = [("▁a", -3.0), ("▁cup", -4.0), ("▁is", -4.0)]
    pieces += [(c, -5.0) for c in "0123456789[],.:"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    T5Tokenizer(vocab=vocab).save_pretrained(tmp_path / "tokenizer")
    assert json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())[
        "tokenizer_class"
    ] == "T5Tokenizer"
    bert_dir = tmp_path / "qformer_tokenizer"
    bert_dir.mkdir()
    bert_vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "where", "is", "the"]
    bert_vocab += ["cup", "?", "##s"]
    (bert_dir / "vocab.txt").write_text("\n".join(bert_vocab) + "\n")
    (bert_dir / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": 512})
    )

    loaded = LionTokenizers.load(tmp_path)
    assert loaded.tag_token_id == len(vocab) - 1
    assert loaded.t5("a cup").input_ids == [4, 5, 1]
    assert loaded.qformer_bos_id == len(bert_vocab)  # appended, as 30522 is for bert-base
    assert loaded.qformer.bos_token == "[DEC]"
    tokens = loaded.qformer.convert_ids_to_tokens(loaded.qformer("Where IS the cup?").input_ids)
    assert tokens == ["[CLS]", "where", "is", "the", "cup", "?", "[SEP]"]
    assert loaded.qformer.model_max_length == 128
    assert loaded.qformer.truncation_side == "left"


def test_vocab_size_must_leave_room_for_pieces() -> None:
    with pytest.raises(ValueError, match="sentinels"):
        train_nano_tokenizers(["a b c"], 103, 50)
