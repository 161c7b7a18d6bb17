"""The two tokenizers LION needs, kept together in one model directory.

    <model_dir>/tokenizer/          T5 (SentencePiece Unigram): prompt and answer text
    <model_dir>/qformer_tokenizer/  BERT uncased WordPiece plus `[DEC]` as bos: Q-Former text

For the official weights these are copies of the FlanT5 and bert-base-uncased tokenizer
directories; `load` accepts those as they are and adds `[DEC]` the way LION does
(`add_special_tokens({"bos_token": "[DEC]"})`). For nano models `train_nano_tokenizers` builds
look-alikes whose digits are single tokens and whose box punctuation `[ ] , ; . :` are tokens
of their own, so every box coordinate is spelled the same way and decodes back exactly.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from tokenizers import pre_tokenizers as pre
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerFast, T5Tokenizer

T5_DIR = "tokenizer"
QFORMER_DIR = "qformer_tokenizer"
TAG_TOKEN = "<extra_id_0>"  # the soft-prompt slot of the tag sentence
QFORMER_BOS = "[DEC]"
# Always in a nano vocabulary, even if the training corpus lacks some (e.g. no multi-box ";").
BOX_CHARACTERS = list("0123456789[],;.:")


@dataclass(frozen=True)
class TokenizerConfig:
    """Settings applied to both freshly trained and loaded tokenizers."""

    # Official `t5_tokenizer` and Q-Former tokenizer both cut long prompts from the left (the
    # question, at the end, survives); answers are short and never reach the limit.
    t5_truncation_side: str = "left"
    qformer_truncation_side: str = "left"
    qformer_max_length: int = 128  # official `max_txt_len`
    num_sentinels: int = 100  # T5's <extra_id_0..99>


DEFAULT_TOKENIZER_CONFIG = TokenizerConfig()


@dataclass
class LionTokenizers:
    """The T5 tokenizer (`.t5`) and the Q-Former tokenizer (`.qformer`) of one model."""

    t5: PreTrainedTokenizerFast
    qformer: PreTrainedTokenizerFast

    @property
    def tag_token_id(self) -> int:
        """Id of `<extra_id_0>`, whose embedding the soft tag prompt replaces (32099 in T5)."""
        return self.t5.convert_tokens_to_ids(TAG_TOKEN)

    @property
    def qformer_bos_id(self) -> int:
        """Id of `[DEC]` (30522 in bert-base-uncased + LION)."""
        return self.qformer.convert_tokens_to_ids(QFORMER_BOS)

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer/` and `qformer_tokenizer/` under `directory`."""
        directory = Path(directory)
        self.t5.save_pretrained(directory / T5_DIR)
        self.qformer.save_pretrained(directory / QFORMER_DIR)

    @classmethod
    def load(
        cls, directory: str | Path, config: TokenizerConfig = DEFAULT_TOKENIZER_CONFIG
    ) -> LionTokenizers:
        """Read both tokenizers from local files only (no hub access)."""
        directory = Path(directory)
        t5 = _load_dir(directory / T5_DIR, T5Tokenizer, ("tokenizer.json", "spiece.model"))
        if TAG_TOKEN not in t5.get_vocab():
            raise ValueError(f"{directory / T5_DIR} has no {TAG_TOKEN}: not a T5 tokenizer")
        qformer = _load_dir(
            directory / QFORMER_DIR, BertTokenizer, ("tokenizer.json", "vocab.txt")
        )
        if QFORMER_BOS not in qformer.get_vocab():
            qformer.add_special_tokens({"bos_token": QFORMER_BOS})
        else:
            qformer.bos_token = QFORMER_BOS
        return _configured(t5, qformer, config)


def _load_dir(
    path: Path, fallback: type[PreTrainedTokenizerFast], vocab_files: tuple[str, ...]
) -> PreTrainedTokenizerFast:
    # Checked here because transformers v5 would quietly build an empty default tokenizer from a
    # directory without vocabulary files.
    if not any((path / name).is_file() for name in vocab_files):
        raise FileNotFoundError(
            f"no tokenizer in {path} (expected one of {', '.join(vocab_files)}); a LION model "
            f"directory holds {T5_DIR}/ and {QFORMER_DIR}/"
        )
    config_file = path / "tokenizer_config.json"
    named = config_file.is_file() and "tokenizer_class" in json.loads(config_file.read_text())
    # Hub copies of bert-base-uncased name no class in tokenizer_config.json (AutoTokenizer would
    # then need the model's config.json), so fall back to what the directory must hold.
    loader = AutoTokenizer if named else fallback
    return loader.from_pretrained(str(path), local_files_only=True)


def _configured(
    t5: PreTrainedTokenizerFast, qformer: PreTrainedTokenizerFast, config: TokenizerConfig
) -> LionTokenizers:
    t5.truncation_side = config.t5_truncation_side
    qformer.truncation_side = config.qformer_truncation_side
    qformer.model_max_length = config.qformer_max_length
    return LionTokenizers(t5=t5, qformer=qformer)


def _isolate_digits_and_punctuation() -> list[pre.PreTokenizer]:
    return [pre.Punctuation("isolated"), pre.Digits(individual_digits=True)]


def _word_unigram_vocab(tokenizer: Tokenizer, corpus: list[str], size: int) -> list[tuple[str, float]]:
    """Unigram pieces for a closed-vocabulary corpus: every character, then whole pre-tokens.

    `tokenizers`' UnigramTrainer seeds candidates from substrings shared by distinct words, so
    on a small templated corpus short frequent words ("no", "a", "three") never become pieces
    and answers are spelt letter by letter. The synthetic corpus has a few hundred distinct
    words, so the vocabulary is built directly: each character seen (with and without the
    word-start mark, so unseen words still encode) plus the most frequent pre-tokens, scored by
    their log frequency so Viterbi prefers whole words.
    """
    counts: Counter[str] = Counter()
    for text in corpus:
        for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text)):
            counts[piece] += 1
    chars = sorted({c for piece in counts for c in piece} | set(BOX_CHARACTERS))
    # Punctuation is isolated before the word-start mark can join it, so only alphanumerics
    # need a marked variant.
    fallback = dict.fromkeys(chars, 1) | {"\u2581" + c: 1 for c in chars if c.isalnum()}
    if len(fallback) > size:
        raise ValueError(f"a vocabulary of {size} pieces cannot hold the corpus's {len(fallback)} character pieces")
    words = [w for w, _ in counts.most_common() if w not in fallback]
    pieces = {**fallback, **{w: counts[w] for w in words[: size - len(fallback)]}}
    total = sum(pieces.values())
    return [(piece, math.log(count / total)) for piece, count in pieces.items()]


def train_nano_tokenizers(
    texts: Iterable[str],
    t5_vocab_size: int,
    qformer_vocab_size: int,
    config: TokenizerConfig = DEFAULT_TOKENIZER_CONFIG,
) -> LionTokenizers:
    """Train small T5-like and BERT-like tokenizers on `texts`.

    T5-like: Unigram with `<pad>`=0, `</s>`=1, `<unk>`=2, then the learnt pieces, then
    `<extra_id_99>` .. `<extra_id_0>` so `<extra_id_0>` is the last id, as in T5; `</s>` is
    appended to every encoded text. `t5_vocab_size` counts all of these and is an upper bound:
    a corpus with fewer distinct words gives fewer pieces, so size model embeddings with
    `len(tokenizers.t5)`.
    BERT-like: lowercase WordPiece with [PAD]=0, [UNK], [CLS], [SEP], [MASK], [DEC]=5.
    """
    corpus = list(texts)
    t5_specials = ["<pad>", "</s>", "<unk>"]
    if t5_vocab_size <= len(t5_specials) + config.num_sentinels:
        raise ValueError(
            f"t5_vocab_size {t5_vocab_size} leaves no room for pieces next to "
            f"{len(t5_specials)} special tokens and {config.num_sentinels} sentinels"
        )
    t5 = Tokenizer(models.Unigram())
    t5.normalizer = normalizers.NFKC()
    t5.pre_tokenizer = pre.Sequence(
        [pre.WhitespaceSplit(), pre.Metaspace(prepend_scheme="always"), *_isolate_digits_and_punctuation()]
    )
    t5.decoder = decoders.Metaspace(prepend_scheme="always")
    vocab = _word_unigram_vocab(t5, corpus, t5_vocab_size - len(t5_specials) - config.num_sentinels)
    t5.model = models.Unigram([(token, 0.0) for token in t5_specials] + vocab, unk_id=2, byte_fallback=False)
    sentinels = [f"<extra_id_{i}>" for i in reversed(range(config.num_sentinels))]
    t5.add_special_tokens(sentinels)
    t5.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", t5.token_to_id("</s>"))]
    )

    bert_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", QFORMER_BOS]
    bert = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bert.normalizer = normalizers.BertNormalizer(lowercase=True)
    bert.pre_tokenizer = pre.Sequence([pre.BertPreTokenizer(), *_isolate_digits_and_punctuation()])
    bert.decoder = decoders.WordPiece()
    bert.train_from_iterator(
        corpus,
        trainers.WordPieceTrainer(
            vocab_size=qformer_vocab_size,
            special_tokens=bert_specials,
            initial_alphabet=BOX_CHARACTERS,
            show_progress=False,
        ),
    )
    bert.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, bert.token_to_id(token)) for token in ("[CLS]", "[SEP]")],
    )

    return _configured(
        PreTrainedTokenizerFast(
            tokenizer_object=t5,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            extra_special_tokens=sentinels,
            clean_up_tokenization_spaces=False,
        ),
        PreTrainedTokenizerFast(
            tokenizer_object=bert,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            bos_token=QFORMER_BOS,
        ),
        config,
    )
