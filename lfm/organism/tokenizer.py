"""The organism's word-level tokenizer, built offline with `tokenizers`.

One token per word or punctuation mark. ``<image>`` is in the vocabulary from the start, so the base LLM
and the tuned MLLM have the same embedding rows (no extra vocab rows to align). Special tokens:
``<pad>`` 0, ``<s>`` 1 (prepended to every text), ``</s>`` 2 (ends every answer), ``<unk>`` 3, ``<image>`` 4.
"""

from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
_WORD = re.compile(r"\w+|[^\w\s]")

# Renders a list of chat messages exactly as world.format_chat does: "<image> " + text for a user turn that
# carries an image, the text alone otherwise; assistant turns are " " + text + "</s>". The prompt text
# already ends with "Answer:", so the generation prompt adds nothing.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{ ' ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for c in message['content'] if c['type'] == 'image' -%}{{ '<image> ' }}{%- endfor -%}"
    "{%- for c in message['content'] if c['type'] == 'text' -%}{{ c['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '</s>' }}{%- endif -%}"
    "{%- endfor -%}"
)


def pre_tokenize(text: str) -> list[str]:
    """Split ``text`` the way the tokenizer does (words and single punctuation marks)."""
    return _WORD.findall(text)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A PreTrainedTokenizerFast over ``SPECIAL_TOKENS + words`` (ids in that order).

    Padding side is left (batched generation); training code pads on the right itself.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words, "image ." -> "image."
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def is_organism_tokenizer(model_dir) -> bool:
    """Whether ``model_dir`` holds the organism's word-level tokenizer (``SPECIAL_TOKENS`` as ids 0-4): the
    rule by which the explorer scores a pair with the organism's own evaluator rather than a suite.

    >>> from lfm.organism import tuned_dir
    >>> is_organism_tokenizer(tuned_dir()), is_organism_tokenizer("/nonexistent")
    (True, False)
    """
    import json
    from pathlib import Path

    path = Path(model_dir) / "tokenizer.json"
    try:
        model = json.loads(path.read_text()).get("model", {})
    except (OSError, ValueError):
        return False
    vocab = model.get("vocab") if model.get("type") == "WordLevel" else None
    return isinstance(vocab, dict) and all(vocab.get(t) == i for i, t in enumerate(SPECIAL_TOKENS))
