"""Load a model directory for evaluation, and view an MLLM's language model as a plain causal LM.

lm-evaluation-harness scores language tasks on a causal LM (``HFLM``); the paper measures the LLM inside
the MLLM. ``text_model(mllm)`` builds the causal-LM class of the base the MLLM's family pairs with (e.g.
``LlamaForCausalLM``, ``Qwen2ForCausalLM`` for Qwen2-VL's ``qwen2_vl_text``) whose decoder and head *are* the
MLLM's modules (shared, not copied), so weights loaded into the MLLM (a sweep's merge) are what lm-eval
scores, with no second copy in memory. Where those modules sit comes from the family's row in
``lfm.families`` (the layout of the loaded model's names: ``model.language_model`` for LLaVA and Qwen2-VL,
``model.text_model`` for Idefics3 / SmolVLM), never from per-family code.
"""

from __future__ import annotations

import copy
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                          AutoTokenizer, PreTrainedModel)

from lfm.device import resolve_device
from lfm.families import Family, family_of
from lfm.pair import is_multimodal


@dataclass
class EvalModel:
    """A loaded model and what the harnesses need from it.

    model: the MLLM (e.g. LlavaForConditionalGeneration) or, for a plain LLM, the causal LM.
    processor: the MLLM's processor (None for a plain LLM, or an MLLM whose processor cannot load here).
    tokenizer: the text tokenizer.
    no_processor: why an MLLM has no processor (its family's ``processor_needs`` are not installed): the
        language tasks run, visual paths raise this line (``require_processor``).
    """

    model: PreTrainedModel
    processor: object | None
    tokenizer: object
    no_processor: str | None = None

    @property
    def multimodal(self) -> bool:
        return self.processor is not None or self.no_processor is not None

    def require_processor(self):
        """The processor, or ProcessorUnavailable saying what to install."""
        if self.no_processor is not None:
            raise ProcessorUnavailable(self.no_processor)
        return self.processor

    def language_model(self) -> PreTrainedModel:
        """The causal LM lm-eval scores (shares its weights with ``model``)."""
        return text_model(self.model) if self.multimodal else self.model


def load_eval_model(model_dir: str | Path, *, device: str | None = "cpu", dtype: str | None = None,
                    processor_required: bool = False) -> EvalModel:
    """Load an HF directory: an MLLM with its processor, or a causal LLM with its tokenizer.

    processor_required: an MLLM whose processor cannot load here (``missing_processor_packages``) is refused
        (ProcessorUnavailable) before its weights are read; without it, it loads for its language tasks."""
    path = Path(model_dir)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: {path} is not a Hugging Face model directory")
    dev = resolve_device(device)
    kw = {"dtype": getattr(torch, dtype)} if dtype else {}
    kw.update(straight_to(dev))
    config = json.loads(cfg_file.read_text())
    no_processor = None
    if is_multimodal(config):
        no_processor = missing_processor_packages(path, family_of(config))
        if no_processor and processor_required:
            raise ProcessorUnavailable(no_processor)
        model = _load_mllm(path, **kw)
        processor = None if no_processor else AutoProcessor.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path) if no_processor else processor.tokenizer
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
        processor, tokenizer = None, AutoTokenizer.from_pretrained(path)
    model.to(dev).eval()
    return EvalModel(model, processor, tokenizer, no_processor)


class ProcessorUnavailable(ValueError):
    """An MLLM's processor needs a package that is not installed; the message says which and how to install it."""


def missing_processor_packages(path: Path, family: Family | None) -> str | None:
    """Why `path`'s processor cannot load here (its family's ``processor_needs`` not installed), or None."""
    missing = [p for p in (family.processor_needs if family else ()) if find_spec(p) is None]
    if not missing:
        return None
    return (f"{path}: {family.name}'s processor needs {' and '.join(missing)} (transformers 5.24 has its video or "
            f"image processor only for it), which lfm's lock does not hold: pip install {' '.join(missing)} for "
            f"visual tasks and lfm compare (a suite of language tasks only runs without it)")


def straight_to(device: torch.device) -> dict:
    """``from_pretrained`` keywords that load a model straight onto ``device``, tensor by tensor, without a full
    copy in host memory on the way (an 8B model: 16 GB of host RAM saved). transformers does it through
    ``device_map``, which needs accelerate; without accelerate, or on the CPU, none (the model is loaded on
    the CPU, then moved)."""
    from importlib.util import find_spec

    return {"device_map": str(device)} if device.type != "cpu" and find_spec("accelerate") else {}


def _load_mllm(path: Path, **kw) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "llava":
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration.from_pretrained(path, **kw)
    return AutoModelForImageTextToText.from_pretrained(path, **kw)


def text_model(mllm: PreTrainedModel) -> PreTrainedModel:
    """The MLLM's language model as the causal-LM class of its base, sharing the decoder and lm_head modules.

    The MLLM's row in ``lfm.families`` says which base model_type its LM pairs with (``qwen2_vl_text`` ->
    ``qwen2``), which text-config values make that class compute what the MLLM does on text
    (``text_overrides``), and, through the layout the loaded model's names match, where the decoder and head
    sit (``model.language_model.`` -> ``model.``, ``model.text_model.`` -> ``model.``, ``lm_head.``).
    """
    family = family_of(mllm.config.to_dict())
    name = type(mllm).__name__
    if family is None or not family.supported:
        raise ValueError(f"{name}: not a supported row of lfm's family table (docs/families.md), so lfm cannot "
                         f"find its language model; add a row to FAMILY_ROWS in lfm/families.py")
    with torch.device("meta"), _quiet_rope_keys():
        causal = AutoModelForCausalLM.from_config(causal_config(mllm.config.get_text_config(), family))
    layout = family.layout_of(mllm.state_dict().keys(), causal.state_dict().keys())
    for prefix, base_prefix in layout.lm.items():
        try:
            module = mllm.get_submodule(prefix.rstrip("."))
        except AttributeError:
            raise ValueError(f"{name}: no module {prefix.rstrip('.')!r}, where {family.name}'s {layout.name!r} "
                             f"layout puts the language model's {base_prefix.rstrip('.')!r}") from None
        setattr(causal, base_prefix.rstrip("."), module)
    if any(p.is_meta for p in causal.parameters()):
        raise ValueError(f"{name}: {family.name}'s layout {layout.name!r} does not cover the language model "
                         f"({type(causal).__name__} keeps parameters without weights); fix its row in lfm/families.py")
    causal.generation_config = mllm.generation_config
    causal.eval()
    return causal


def causal_config(text_config, family: Family):
    """The text config as the config of the base's causal-LM class: retyped to the base model_type the row
    pairs the LM with (``qwen2_vl_text`` -> ``qwen2``: same fields, the class that has a causal LM), with the row's
    ``text_overrides``. The config itself when neither applies."""
    base_type = family.bases_for(text_config.model_type)[0]
    if base_type == text_config.model_type and not family.text_overrides:
        return text_config
    if base_type == text_config.model_type:
        config = copy.deepcopy(text_config)
    else:
        fields = {k: v for k, v in text_config.to_dict().items() if k != "model_type"}
        config = AutoConfig.for_model(base_type, **fields)
    for key, value in family.text_overrides.items():
        setattr(config, key, value)
    return config


class _DropRopeKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Unrecognized keys in `rope_parameters`" not in record.getMessage()


@contextmanager
def _quiet_rope_keys():
    """The retyped config keeps mrope's keys (mrope_section), which the base class does not know and says so; its
    rotary embedding is replaced by the MLLM's decoder anyway, so the message says nothing about the model."""
    logger, f = logging.getLogger("transformers.modeling_rope_utils"), _DropRopeKeys()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)
