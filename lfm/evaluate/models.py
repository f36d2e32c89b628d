"""Load a model directory for evaluation, and view an MLLM's language model as a plain causal LM.

lm-evaluation-harness scores language tasks on a causal LM (``HFLM``); the paper measures the LLM inside
the MLLM. ``text_model(mllm)`` builds the text model class (e.g. ``LlamaForCausalLM``) whose decoder and
head *are* the MLLM's modules (shared, not copied), so weights loaded into the MLLM (a sweep's merge) are
what lm-eval scores, with no second copy in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                          AutoTokenizer, PreTrainedModel)

from lfm.device import resolve_device
from lfm.pair import is_multimodal


@dataclass
class EvalModel:
    """A loaded model and what the harnesses need from it.

    model: the MLLM (e.g. LlavaForConditionalGeneration) or, for a plain LLM, the causal LM.
    processor: the MLLM's processor (None for a plain LLM).
    tokenizer: the text tokenizer.
    """

    model: PreTrainedModel
    processor: object | None
    tokenizer: object

    @property
    def multimodal(self) -> bool:
        return self.processor is not None

    def language_model(self) -> PreTrainedModel:
        """The causal LM lm-eval scores (shares its weights with ``model``)."""
        return text_model(self.model) if self.multimodal else self.model


def load_eval_model(model_dir: str | Path, *, device: str | None = "cpu", dtype: str | None = None) -> EvalModel:
    """Load an HF directory: an MLLM with its processor, or a causal LLM with its tokenizer."""
    path = Path(model_dir)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: {path} is not a Hugging Face model directory")
    dev = resolve_device(device)
    kw = {"dtype": getattr(torch, dtype)} if dtype else {}
    kw.update(straight_to(dev))
    if is_multimodal(json.loads(cfg_file.read_text())):
        model = _load_mllm(path, **kw)
        processor = AutoProcessor.from_pretrained(path)
        tokenizer = processor.tokenizer
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
        processor, tokenizer = None, AutoTokenizer.from_pretrained(path)
    model.to(dev).eval()
    return EvalModel(model, processor, tokenizer)


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
    """The MLLM's language model as its causal-LM class, sharing the decoder and lm_head modules.

    Works for LLaVA-style models (``mllm.model.language_model`` + ``mllm.lm_head``), as transformers 5
    lays them out.
    """
    inner = getattr(mllm, "model", None)
    decoder = getattr(inner, "language_model", None)
    head = getattr(mllm, "lm_head", None)
    if decoder is None or head is None:
        raise ValueError(f"{type(mllm).__name__}: cannot find its language model (expected .model.language_model "
                         f"and .lm_head as in transformers' LLaVA classes)")
    text_cfg = mllm.config.get_text_config()
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(text_cfg)
    causal.model = decoder
    causal.lm_head = head
    causal.generation_config = mllm.generation_config
    causal.eval()
    return causal
