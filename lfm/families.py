"""The MLLM families lfm can merge a base LLM into, as data: one row per family, no per-family code.

A row says, for the multimodal classes of one family in transformers 5.24:

    model_types, classes  how a tuned checkpoint's config.json names the family (top-level ``model_type``, or
                          its ``architectures`` when the model_type is absent)
    lm_types, base_types  the ``text_config.model_type`` its language model may have (empty: any), and the base
                          LLM model_type each pairs with when it is not the same name (``qwen2_vl_text`` -> ``qwen2``)
    layouts               every key layout transformers writes (``save_pretrained``) or loads (its in-memory names):
                          ``lm`` maps a checkpoint prefix to the base causal LM's prefix, ``passthrough`` names the
                          parts copied from tuned (vision tower, projector, connector, image_newline, ...)
    tied                  the default of the top-level ``tie_word_embeddings`` (transformers ties lm_head to the
                          embedding by that flag; a tied checkpoint stores no ``lm_head``)
    vocab                 how the MLLM's vocabulary relates to the base's (added image tokens are extra rows at
                          the end: shared rows are merged, extra rows kept from tuned)
    match, may_differ     text-config fields that must equal the base's for its weights to be the MLLM's LM
                          weights (refused when both configs state them and they differ), and fields that may
                          differ without changing what a weight means (reported; the merged model keeps tuned's)
    refuse                why the family cannot be paired (the row then only explains the refusal)
    verified              what the tests prove for the row (tests/test_families.py; docs/families.md shows it)

and, optionally (empty when left out):

    text_overrides        text-config values under which the base's causal-LM class, run on the MLLM's LM
                          modules, computes what the MLLM's own forward does on a text prompt (``lfm eval``'s
                          language tasks, ``lfm.evaluate.models.text_model``): e.g. Aya Vision's head does not
                          apply Cohere2's ``logit_scale``, so its text model's is 1
    processor_needs       packages the family's AutoProcessor needs that lfm's lock does not hold (``torchvision``:
                          a video processor, or an image processor, that transformers 5.24 has only for
                          torchvision); without them its visual paths refuse in one line naming the install

Which layout a checkpoint uses is read from its keys (``Family.layout_of``): the layout under which the most
tuned keys are base tensors. A new family is a row here; ``docs/families.md`` is generated from this table
(``families_markdown``) and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

# shape-defining fields: a base whose values differ cannot hold the same tensors
SHAPES = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
          "head_dim")
# fields that change what the rotary embedding / context length do, never what a weight means
ROPE = ("rope_parameters", "rope_theta", "rope_scaling", "max_position_embeddings")

# the default of `tie_word_embeddings` of base causal-LM configs that tie (checked against transformers by a test)
BASE_TIED_BY_DEFAULT = ("gemma", "gemma2", "gemma3_text", "cohere", "cohere2")

# what the tests establish per supported row (tests/test_families.py); docs/families.md spells them out
CHECKS = {
    "layouts": "every layout listed merges (tiny checkpoints written by save_pretrained and with the in-memory names)",
    "formula": "LM tensors of TIES, TA (alpha) and Neu-S-TIES equal a formula written out in the test",
    "passthrough": "every non-LM tensor byte-equal to tuned",
    "loads": "the output loads with the tuned class; its LM weights are the merged ones",
    "image": "the merged model generates from an image",
    "processor": "the image inputs come from AutoProcessor loaded from the merged output (tokenizer + image processor)",
    "score": "`lfm score` and `lfm pair` run on the pair",
    "resident": "`ResidentPair.apply` writes lfm merge's bytes into the loaded tuned model",
    "explorer": "the explorer's live source opens the pair; its neuron curve is C(i) = sum |delta| of the tensors",
    "compare": "`lfm compare --items FILE.jsonl` answers are the stage merges' own greedy answers (processor + chat "
               "template from the tuned directory)",
    "notebooks": "notebooks 01 (neuron changes) and 04 (FFN key-value memories) run on the pair, their checks passing",
    "eval": "`lfm eval`'s text model (the base's causal-LM class on the MLLM's own LM modules, found through the "
            "layout of the loaded model's names) gives the tuned MLLM's logits and greedy tokens on a text prompt",
}

FIELDS = ("name", "model_types", "classes", "lm_types", "base_types", "layouts", "tied", "vocab", "match",
          "may_differ", "notes", "examples", "verified", "refuse")
OPTIONAL_FIELDS = {"text_overrides": {}, "processor_needs": ()}  # field -> its value when a row leaves it out
LAYOUT_FIELDS = ("lm", "passthrough")

_EVERY_ROW = ("layouts", "formula", "passthrough", "loads", "score", "resident", "eval")
_ALL_CHECKS = _EVERY_ROW + ("image", "processor")
_NO_PROCESSOR = _EVERY_ROW + ("image",)  # its processor needs torchvision (not in the lock): processor_needs
_TORCHVISION = ("torchvision",)
_NO_IMAGE = _EVERY_ROW  # no image inputs written for it yet: text-only generation


def _llava_layouts(**extra_parts: str) -> dict:
    """The two layouts of the LLaVA-style classes: `save_pretrained` writes the legacy names (transformers 5
    reverses its load-time renaming), the in-memory names load as they are."""
    return {
        "save_pretrained": {"lm": {"language_model.model.": "model.", "language_model.lm_head.": "lm_head."},
                            "passthrough": {"vision_tower.": "vision tower", "multi_modal_projector.": "projector",
                                            **extra_parts}},
        "in-memory names": {"lm": {"model.language_model.": "model.", "lm_head.": "lm_head."},
                            "passthrough": {"model.vision_tower.": "vision tower",
                                            "model.multi_modal_projector.": "projector",
                                            **{"model." + k: v for k, v in extra_parts.items()}}},
    }


_QWEN_VL_LAYOUTS = {  # Qwen2-VL / Qwen2.5-VL: save_pretrained writes the hub's names (LM at the top, like a causal LM)
    "save_pretrained": {"lm": {"model.": "model.", "lm_head.": "lm_head."},
                        "passthrough": {"visual.": "vision tower + merger"}},
    "in-memory names": {"lm": {"model.language_model.": "model.", "lm_head.": "lm_head."},
                        "passthrough": {"model.visual.": "vision tower + merger"}},
}
_MODEL_LM = {"model.language_model.": "model.", "lm_head.": "lm_head."}  # classes that save their in-memory names
_IDEFICS = {"save_pretrained = in-memory names": {
    "lm": {"model.text_model.": "model.", "lm_head.": "lm_head."},
    "passthrough": {"model.vision_model.": "vision tower", "model.connector.": "connector"}}}
_MROPE = ("mrope: the LM rotates the same head dimensions with the same rope_theta frequencies, split into "
          "(temporal, height, width) sections by mrope_section, so the base's q/k weights are used as they are; "
          "rope_theta itself may differ (reported)")
_LLAVA_MATCH = SHAPES + ("hidden_act",)
# Cohere2ForCausalLM multiplies its logits by logit_scale; the Cohere2-based MLLM classes apply lm_head alone
_UNSCALED_HEAD = {"logit_scale": 1.0}

FAMILY_ROWS: tuple[dict, ...] = (
    dict(name="LLaVA", model_types=("llava",), classes=("LlavaForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_llava_layouts(), tied=False,
         vocab="the <image> token (and padding) may add rows at the end: extra rows, kept from tuned",
         match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps",),
         notes="any causal LM lfm knows as the LM (Llama, Mistral, Qwen2, ...); the base has the same model_type",
         examples=("llava-hf/llava-1.5-7b-hf on lmsys/vicuna-7b-v1.5",), verified=_ALL_CHECKS, refuse=None),
    dict(name="LLaVA-Next", model_types=("llava_next",), classes=("LlavaNextForConditionalGeneration",),
         lm_types=(), base_types={}, layouts=_llava_layouts(image_newline="image_newline"), tied=False,
         vocab="added image tokens are extra rows (Llama-3 128256 -> llama3-llava-next 128320)",
         match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps",), notes="the paper's family (Llama-3, Mistral)",
         examples=("llava-hf/llama3-llava-next-8b-hf on meta-llama/Meta-Llama-3-8B-Instruct",
                   "llava-hf/llava-v1.6-mistral-7b-hf on mistralai/Mistral-7B-Instruct-v0.2"),
         verified=_ALL_CHECKS, refuse=None),
    dict(name="LLaVA-NeXT-Video", model_types=("llava_next_video",),
         classes=("LlavaNextVideoForConditionalGeneration",), lm_types=(), base_types={},
         layouts=_llava_layouts(image_newline="image_newline"), tied=False,
         vocab="<image>/<video> tokens: extra rows when the tuned vocabulary is larger", match=_LLAVA_MATCH,
         may_differ=ROPE + ("rms_norm_eps",), notes="LLaVA-Next's layout; the video tower is the image tower",
         examples=(), verified=_NO_IMAGE,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="LLaVA-OneVision", model_types=("llava_onevision",),
         classes=("LlavaOnevisionForConditionalGeneration",), lm_types=(), base_types={},
         layouts=_llava_layouts(image_newline="image_newline"), tied=False,
         vocab="<image>/<video> tokens: extra rows when the tuned vocabulary is larger", match=_LLAVA_MATCH,
         may_differ=ROPE + ("rms_norm_eps", "sliding_window", "max_window_layers", "layer_types"),
         notes="Qwen2 LM; the base is a Qwen2 causal LM",
         examples=("llava-hf/llava-onevision-qwen2-7b-ov-hf on Qwen/Qwen2-7B-Instruct",), verified=_NO_PROCESSOR,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="VipLLaVA", model_types=("vipllava",), classes=("VipLlavaForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_llava_layouts(), tied=False,
         vocab="the <image> token may add rows: extra rows", match=_LLAVA_MATCH,
         may_differ=ROPE + ("rms_norm_eps",), notes="LLaVA's layout; multi-layer projector", examples=(),
         verified=_ALL_CHECKS, refuse=None),
    dict(name="Qwen2-VL", model_types=("qwen2_vl",), classes=("Qwen2VLForConditionalGeneration",),
         lm_types=("qwen2_vl_text",), base_types={"qwen2_vl_text": ("qwen2",)}, layouts=_QWEN_VL_LAYOUTS,
         tied=False,
         vocab="Qwen2's embedding table already holds the vision tokens (<|vision_start|>, <|image_pad|>, ...): "
               "usually no extra rows",
         match=SHAPES + ("hidden_act",),
         may_differ=ROPE + ("rms_norm_eps", "sliding_window", "max_window_layers", "layer_types"),
         notes=_MROPE, examples=("Qwen/Qwen2-VL-7B-Instruct on Qwen/Qwen2-7B-Instruct",),
         verified=_NO_PROCESSOR + ("explorer",),
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="Qwen2.5-VL", model_types=("qwen2_5_vl",), classes=("Qwen2_5_VLForConditionalGeneration",),
         lm_types=("qwen2_5_vl_text",), base_types={"qwen2_5_vl_text": ("qwen2",)}, layouts=_QWEN_VL_LAYOUTS,
         tied=False, vocab="as Qwen2-VL: the vision tokens are in Qwen2.5's table already",
         match=SHAPES + ("hidden_act",),
         may_differ=ROPE + ("rms_norm_eps", "sliding_window", "max_window_layers", "layer_types"),
         notes=_MROPE + "; Qwen2.5 causal LMs have model_type qwen2",
         examples=("Qwen/Qwen2.5-VL-7B-Instruct on Qwen/Qwen2.5-7B-Instruct",), verified=_NO_PROCESSOR,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="Qwen3-VL", model_types=("qwen3_vl",), classes=("Qwen3VLForConditionalGeneration",),
         lm_types=("qwen3_vl_text",), base_types={"qwen3_vl_text": ("qwen3",)},
         layouts={"save_pretrained = in-memory names": {"lm": _MODEL_LM,
                                                        "passthrough": {"model.visual.": "vision tower + mergers"}}},
         tied=False, vocab="the vision tokens are in Qwen3's table already: usually no extra rows",
         match=SHAPES + ("hidden_act",), may_differ=ROPE + ("rms_norm_eps",),
         notes="interleaved mrope (same weights, see Qwen2-VL); deepstack mergers feed visual features into the "
               "first LM layers' hidden states, not their weights; rope_theta differs in released pairs (reported)",
         examples=("Qwen/Qwen3-VL-8B-Instruct on Qwen/Qwen3-8B",), verified=_NO_PROCESSOR,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="Idefics2", model_types=("idefics2",), classes=("Idefics2ForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_IDEFICS, tied=False,
         vocab="<fake_token_around_image>, <image>, <end_of_utterance>: extra rows", match=_LLAVA_MATCH,
         may_differ=ROPE + ("rms_norm_eps", "sliding_window"),
         notes="Mistral LM at model.text_model; the connector is a perceiver resampler (passthrough)",
         examples=("HuggingFaceM4/idefics2-8b on mistralai/Mistral-7B-v0.1",),
         verified=_ALL_CHECKS, refuse=None),
    dict(name="Idefics3", model_types=("idefics3",), classes=("Idefics3ForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_IDEFICS, tied=False,
         vocab="<fake_token_around_image>, <image>, <end_of_utterance> (and row/column tokens): extra rows",
         match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps",), notes="Llama LM at model.text_model",
         examples=("HuggingFaceM4/Idefics3-8B-Llama3 on meta-llama/Llama-3.1-8B-Instruct",),
         verified=_ALL_CHECKS + ("explorer", "notebooks"),
         refuse=None),
    dict(name="SmolVLM", model_types=("smolvlm",), classes=("SmolVLMForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_IDEFICS, tied=False,
         vocab="image, row/column and <end_of_utterance> tokens: extra rows", match=_LLAVA_MATCH,
         may_differ=ROPE + ("rms_norm_eps",),
         notes="Idefics3's layout on SmolLM2 (Llama); SmolVLM raised rope_theta for long context (reported)",
         examples=("HuggingFaceTB/SmolVLM-Instruct on HuggingFaceTB/SmolLM2-1.7B-Instruct",), verified=_NO_PROCESSOR,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="Gemma 3", model_types=("gemma3",), classes=("Gemma3ForConditionalGeneration",),
         lm_types=("gemma3_text",), base_types={}, layouts=_llava_layouts(), tied=True,
         vocab="<image_soft_token> and friends: the 4B+ vocabulary (262208) is 64 rows larger than gemma-3-1b's "
               "(262144): extra rows",
         match=SHAPES + ("hidden_activation", "query_pre_attn_scalar"),
         may_differ=ROPE + ("rms_norm_eps", "sliding_window", "layer_types"),
         notes="tied embeddings: no lm_head stored; the base is a Gemma3ForCausalLM (gemma3_text), e.g. the LM "
               "of a -pt checkpoint saved as a causal LM (Gemma 3 4B+ has no text-only release)",
         examples=(), verified=_ALL_CHECKS + ("compare",), refuse=None),
    dict(name="PaliGemma", model_types=("paligemma",), classes=("PaliGemmaForConditionalGeneration",),
         lm_types=("gemma", "gemma2"), base_types={}, layouts=_llava_layouts(), tied=True,
         vocab="<image>, 1024 <locNNNN> and 128 <segNNN> tokens appended to Gemma's 256000: extra rows",
         match=SHAPES + ("hidden_act", "hidden_activation", "query_pre_attn_scalar"),
         may_differ=ROPE + ("rms_norm_eps", "sliding_window", "use_bidirectional_attention"),
         notes="tied embeddings; the prefix (image + prompt) is attended bidirectionally, the weights are Gemma's",
         examples=("google/paligemma2-3b-pt-224 on google/gemma-2-2b",), verified=_ALL_CHECKS, refuse=None),
    dict(name="Mistral 3", model_types=("mistral3",), classes=("Mistral3ForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_llava_layouts(), tied=True,
         vocab="Tekken's vocabulary holds [IMG], [IMG_BREAK], [IMG_END] already: usually no extra rows",
         match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps", "sliding_window"),
         notes="Mistral LM; the top-level tie_word_embeddings defaults to true in transformers 5.24: untied "
               "checkpoints state false",
         examples=("mistralai/Mistral-Small-3.1-24B-Instruct-2503 on mistralai/Mistral-Small-24B-Instruct-2501",),
         verified=_NO_PROCESSOR,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="InternVL", model_types=("internvl",), classes=("InternVLForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_llava_layouts(), tied=True,
         vocab="<img>, </img>, <IMG_CONTEXT> (and video tokens) added: extra rows",
         match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps", "sliding_window", "max_window_layers", "layer_types"),
         notes="the -hf checkpoints (InternVL3 on Qwen2.5, InternVL3.5 on Qwen3); the top-level "
               "tie_word_embeddings defaults to true: untied checkpoints state false",
         examples=("OpenGVLab/InternVL3-8B-hf on Qwen/Qwen2.5-7B",), verified=_NO_PROCESSOR,
         processor_needs=_TORCHVISION, refuse=None),
    dict(name="Aya Vision", model_types=("aya_vision",), classes=("AyaVisionForConditionalGeneration",),
         lm_types=(), base_types={}, layouts=_llava_layouts(), tied=True,
         vocab="image tokens: extra rows when the tuned vocabulary is larger", match=_LLAVA_MATCH,
         may_differ=ROPE + ("layer_norm_eps", "sliding_window", "layer_types"),
         notes="Cohere2 LM (no post-attention norm; tied); the MLLM's head does not apply Cohere2's "
               "logit_scale, which Cohere2ForCausalLM does (lfm eval's text model sets it to 1)", examples=(),
         verified=_ALL_CHECKS, text_overrides=_UNSCALED_HEAD, refuse=None),
    dict(name="GOT-OCR2", model_types=("got_ocr2",), classes=("GotOcr2ForConditionalGeneration",), lm_types=(),
         base_types={}, layouts=_llava_layouts(), tied=True, vocab="image tokens: extra rows",
         match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps", "sliding_window", "max_window_layers", "layer_types"),
         notes="Qwen2 LM", examples=(),
         verified=_NO_IMAGE, refuse=None),
    dict(name="DeepSeek-VL", model_types=("deepseek_vl",), classes=("DeepseekVLForConditionalGeneration",),
         lm_types=(), base_types={},
         layouts={"save_pretrained = in-memory names": {
             "lm": _MODEL_LM, "passthrough": {"model.vision_model.": "vision tower", "model.aligner.": "aligner"}}},
         tied=True, vocab="image tokens: extra rows", match=_LLAVA_MATCH, may_differ=ROPE + ("rms_norm_eps",),
         notes="Llama LM", examples=(),
         verified=_ALL_CHECKS, refuse=None),
    dict(name="Cohere2-Vision", model_types=("cohere2_vision",), classes=("Cohere2VisionForConditionalGeneration",),
         lm_types=(), base_types={},
         layouts={"save_pretrained = in-memory names": {
             "lm": _MODEL_LM, "passthrough": {"model.vision_tower.": "vision tower",
                                              "model.multi_modal_projector.": "projector"}}},
         tied=True, vocab="image tokens: extra rows", match=_LLAVA_MATCH,
         may_differ=ROPE + ("layer_norm_eps", "sliding_window", "layer_types"),
         notes="Command A Vision: Cohere2 LM; as Aya Vision, the MLLM's head does not apply logit_scale", examples=(),
         verified=_NO_IMAGE, processor_needs=_TORCHVISION, text_overrides=_UNSCALED_HEAD, refuse=None),
    dict(name="Mllama", model_types=("mllama",), classes=("MllamaForConditionalGeneration",), lm_types=(),
         base_types={}, layouts={}, tied=False, vocab="", match=(), may_differ=(),
         notes="Llama 3.2 Vision", examples=(), verified=(),
         refuse="its decoder interleaves cross-attention layers with Llama 3.1's self-attention layers (40 = 32 + 8 "
                "in the 11B), so layer N is not the base's layer N; Llama 3.2 Vision kept the text layers frozen, "
                "so there is no text forgetting to merge away"),
    dict(name="Llama 4", model_types=("llama4",), classes=("Llama4ForConditionalGeneration",), lm_types=(),
         base_types={}, layouts={}, tied=False, vocab="", match=(), may_differ=(), notes="", examples=(),
         verified=(),
         refuse="a mixture-of-experts LM with no text-only base release; its experts are fused 3-D tensors, which "
                "lfm's neuron axes (rows / columns of 2-D q, k, v, o, gate, up, down weights) do not describe"),
    dict(name="Qwen3-VL-MoE", model_types=("qwen3_vl_moe",), classes=("Qwen3VLMoeForConditionalGeneration",),
         lm_types=(), base_types={}, layouts={}, tied=False, vocab="", match=(), may_differ=(), notes="",
         examples=(), verified=(),
         refuse="mixture-of-experts LM: the experts are stored fused as 3-D tensors (mlp.experts.gate_up_proj "
                "[experts, hidden, 2 x moe_intermediate], transposed against Qwen3-MoE's), which lfm's neuron axes "
                "(2-D q, k, v, o, gate, up, down weights) do not describe, and the router has no neurons"),
    dict(name="Gemma 3n", model_types=("gemma3n",), classes=("Gemma3nForConditionalGeneration",), lm_types=(),
         base_types={}, layouts={}, tied=True, vocab="", match=(), may_differ=(), notes="", examples=(),
         verified=(),
         refuse="no text-only base LLM exists (the LM was trained multimodal from the start), and its per-layer "
                "embeddings and AltUp projections have no counterpart in another causal LM"),
    dict(name="Chameleon / Emu3", model_types=("chameleon", "emu3"),
         classes=("ChameleonForConditionalGeneration", "Emu3ForConditionalGeneration"), lm_types=(), base_types={},
         layouts={}, tied=False, vocab="", match=(), may_differ=(), notes="", examples=(), verified=(),
         refuse="early-fusion models: images are VQ tokens of one vocabulary trained from scratch with the text, so "
                "there is no base LLM the model was tuned from"),
    dict(name="LFM2-VL", model_types=("lfm2_vl",), classes=("Lfm2VlForConditionalGeneration",), lm_types=(),
         base_types={}, layouts={}, tied=True, vocab="", match=(), may_differ=(), notes="", examples=(),
         verified=(),
         refuse="the LFM2 LM's modules (short convolutions conv.in_proj/out_proj, feed_forward.w1/w2/w3) are not "
                "among lfm's neuron axes (lfm/neurons.py); a row needs those axes first"),
    dict(name="GLM-4V", model_types=("glm4v",), classes=("Glm4vForConditionalGeneration",), lm_types=(),
         base_types={}, layouts={}, tied=False, vocab="", match=(), may_differ=(), notes="", examples=(),
         verified=(),
         refuse="the GLM-4 LM fuses gate and up into mlp.gate_up_proj, which is not among lfm's neuron axes "
                "(lfm/neurons.py); a row needs that axis first"),
)


class FamilyTableError(ValueError):
    """A row of the family table is malformed; the message names the row and the field."""


@dataclass(frozen=True)
class Layout:
    """One key layout of a family: checkpoint prefix -> base prefix for the LM, prefix -> part for the rest."""

    name: str
    lm: dict[str, str]
    passthrough: dict[str, str]

    def canonical(self, key: str) -> str | None:
        """The base causal LM's name of a tuned key, or None when the key is not part of the LM."""
        prefix = _longest(key, (*self.lm, *self.passthrough))
        if prefix is None or prefix not in self.lm:
            return None
        return self.lm[prefix] + key[len(prefix):]

    def lm_prefix(self, key: str) -> str | None:
        """The LM prefix a tuned LM key starts with (the longest), or None."""
        return _longest(key, self.lm)

    def part(self, key: str) -> str:
        """The passthrough part a non-LM key belongs to ('vision tower', ...), 'other' when no prefix names it."""
        prefix = _longest(key, self.passthrough)
        return self.passthrough[prefix] if prefix else "other"

    def key_for(self, name: str) -> list[str]:
        """Every key this layout gives the LM tensor of canonical name `name`."""
        return [prefix + name[len(base):] for prefix, base in self.lm.items() if name.startswith(base)]


@dataclass(frozen=True)
class Family:
    """One row of the table (see the module docstring for the fields)."""

    name: str
    model_types: tuple[str, ...]
    classes: tuple[str, ...]
    lm_types: tuple[str, ...]
    base_types: dict[str, tuple[str, ...]]
    layouts: tuple[Layout, ...]
    tied: bool
    vocab: str
    match: tuple[str, ...]
    may_differ: tuple[str, ...]
    notes: str
    examples: tuple[str, ...]
    verified: tuple[str, ...]
    refuse: str | None
    text_overrides: dict[str, object]
    processor_needs: tuple[str, ...]

    @property
    def supported(self) -> bool:
        return self.refuse is None

    def bases_for(self, lm_type: str) -> tuple[str, ...]:
        """The base model_types the LM of type `lm_type` pairs with."""
        return self.base_types.get(lm_type, (lm_type,))

    def layout_of(self, keys, base_names) -> Layout:
        """The layout under which the most of `keys` are tensors of the base (the first layout on a tie)."""
        base_names = set(base_names)
        return max(self.layouts, key=lambda layout: sum(layout.canonical(k) in base_names for k in keys))

    def loaded_keys(self, name: str) -> list[str]:
        """Every key the LM tensor `name` has in some layout (a loaded model uses one of them)."""
        return [key for layout in self.layouts for key in layout.key_for(name)]


def _longest(key: str, prefixes) -> str | None:
    """The longest of `prefixes` that `key` starts with ('x.' prefixes) or equals (a name without a final dot)."""
    found = [p for p in prefixes if (key.startswith(p) if p.endswith(".") else key == p)]
    return max(found, key=len) if found else None


def _check_type(row: str, field: str, value, kind, of=None) -> None:
    if not isinstance(value, kind) or (of is not None and not all(isinstance(v, of) for v in value)):
        raise FamilyTableError(f"family {row!r}: {field} must be a {kind.__name__}"
                               + (f" of {of.__name__}" if of else "") + f", got {value!r}")


def load_families(rows) -> tuple[Family, ...]:
    """Rows (dicts) -> Family objects, strictly: an unknown or missing field, a wrong type, a check name not in
    CHECKS, a model_type claimed twice or a supported row without a layout is a FamilyTableError."""
    families, owner = [], {}
    for row in rows:
        name = row.get("name", "?") if isinstance(row, dict) else "?"
        if not isinstance(row, dict):
            raise FamilyTableError(f"family rows are dicts, got {row!r}")
        unknown = sorted(set(row) - set(FIELDS) - set(OPTIONAL_FIELDS))
        missing = [f for f in FIELDS if f not in row]
        if unknown or missing:
            problems = ([f"unknown field(s) {unknown}"] if unknown else []) + \
                ([f"missing field(s) {missing}"] if missing else [])
            raise FamilyTableError(f"family {name!r}: {'; '.join(problems)}; a row has exactly {list(FIELDS)} "
                                   f"and may have {list(OPTIONAL_FIELDS)}")
        row = {**OPTIONAL_FIELDS, **row}
        for field in ("name", "vocab", "notes"):
            _check_type(name, field, row[field], str)
        for field in ("model_types", "classes", "lm_types", "match", "may_differ", "examples", "verified",
                      "processor_needs"):
            _check_type(name, field, row[field], tuple, str)
        _check_type(name, "tied", row["tied"], bool)
        _check_type(name, "base_types", row["base_types"], dict)
        _check_type(name, "text_overrides", row["text_overrides"], dict)
        for lm_type, bases in row["base_types"].items():
            _check_type(name, f"base_types[{lm_type!r}]", bases, tuple, str)
        if row["refuse"] is not None:
            _check_type(name, "refuse", row["refuse"], str)
        bad = [c for c in row["verified"] if c not in CHECKS]
        if bad:
            raise FamilyTableError(f"family {name!r}: verified names {bad}, not among {list(CHECKS)}")
        _check_type(name, "layouts", row["layouts"], dict)
        layouts = []
        for layout_name, layout in row["layouts"].items():
            _check_type(name, f"layout {layout_name!r}", layout, dict)
            if set(layout) != set(LAYOUT_FIELDS):
                raise FamilyTableError(f"family {name!r}: layout {layout_name!r} has fields {sorted(layout)}; a "
                                       f"layout has exactly {list(LAYOUT_FIELDS)}")
            for field in LAYOUT_FIELDS:
                _check_type(name, f"layout {layout_name!r} {field}", layout[field], dict)
                for prefix, value in layout[field].items():
                    if not (isinstance(prefix, str) and prefix and isinstance(value, str)
                            and (field == "passthrough" or prefix.endswith(".") and value.endswith("."))):
                        raise FamilyTableError(f"family {name!r}: layout {layout_name!r} {field} maps {prefix!r} to "
                                               f"{value!r}; keys are prefixes ending in '.' (or, for passthrough, "
                                               f"whole tensor names), LM values are base prefixes ending in '.'")
            layouts.append(Layout(layout_name, dict(layout["lm"]), dict(layout["passthrough"])))
        if row["refuse"] is None and not layouts:
            raise FamilyTableError(f"family {name!r}: a supported row needs at least one layout")
        for model_type in row["model_types"]:
            if model_type in owner:
                raise FamilyTableError(f"model_type {model_type!r} is in two rows: {owner[model_type]!r} and {name!r}")
            owner[model_type] = name
        families.append(Family(**{**row, "layouts": tuple(layouts)}))
    return tuple(families)


FAMILIES: tuple[Family, ...] = load_families(FAMILY_ROWS)


def family_of(config: dict) -> Family | None:
    """The row of a tuned checkpoint's config: by its top-level model_type, else by its architectures."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    for family in FAMILIES:
        if isinstance(model_type, str) and model_type in family.model_types:
            return family
    if isinstance(model_type, str) and model_type:
        return None
    return next((f for f in FAMILIES for a in archs if isinstance(a, str) and a in f.classes), None)


def nearest_family(keys, base_names, lm_type) -> tuple[Family, str]:
    """The supported row closest to an unknown MLLM, and why: the one whose layouts find the most of its keys
    among the base's tensors, else one whose LM type matches, else LLaVA."""
    base_names = set(base_names)
    supported = [f for f in FAMILIES if f.supported]
    hits = {f.name: max(sum(l.canonical(k) in base_names for k in keys) for l in f.layouts) for f in supported}
    best = max(supported, key=lambda f: hits[f.name])
    if hits[best.name]:
        layout = best.layout_of(keys, base_names)
        return best, f"its LM keys sit under {', '.join(sorted(layout.lm))}"
    for f in supported:
        if lm_type in f.lm_types or any(lm_type in bases for bases in f.base_types.values()):
            return f, f"same language model type {lm_type!r}"
    return supported[0], "the generic LLaVA layout"


# ------------------------------------------------------------------------------------------------ docs


def families_summary() -> str:
    """README's line on the table: the supported and the refused families, by name (the rest in docs/families.md).

    >>> families_summary().startswith("Supported (")
    True
    """
    supported = [f.name for f in FAMILIES if f.supported]
    refused = [f.name for f in FAMILIES if not f.supported]
    return (f"Supported ({len(supported)}): {', '.join(supported)}. "
            f"Refused, each with its reason ({len(refused)}): {', '.join(refused)}.")


def families_markdown() -> str:
    """docs/families.md, generated from the table (tests/test_families.py keeps the file equal to this)."""
    out = ["# MLLM families lfm merges into",
           "",
           "Generated from `lfm/families.py` by `lfm.families.families_markdown()` (a test keeps this file equal "
           "to it); edit the table, then run `python -m lfm.families > docs/families.md`. `lfm pair BASE TUNED` "
           "prints the row a pair matches.",
           "",
           "lfm merges the language model (LM) inside a tuned multimodal model with the causal LLM it was tuned "
           "from. The LM tensors are found through the family's key layouts and merged; every other tensor "
           "(vision tower, projector, connector, image_newline, anything not in the LM) is copied from tuned "
           "byte for byte. Fields that must match are refused when both configs state them and they differ; "
           "fields that may differ are printed by `lfm pair` and `lfm merge` (the merged model keeps tuned's). "
           f"Always compared: {', '.join(SHAPES)}; the tuned vocabulary may be larger (extra rows at the end "
           "are kept from tuned).",
           "",
           "## Supported",
           "",
           "| family | class | LM type -> base type | LM prefix per layout | tied (default) | verified |",
           "|---|---|---|---|---|---|"]
    for f in FAMILIES:
        if not f.supported:
            continue
        types = ", ".join(f"{t} -> {'/'.join(f.bases_for(t))}" for t in f.lm_types) or "any -> the same"
        prefixes = "; ".join(f"{l.name}: " + ", ".join(f"`{p}`" for p in l.lm) for l in f.layouts)
        out.append(f"| {f.name} | {', '.join(f.classes)} | {types} | {prefixes} | {'yes' if f.tied else 'no'} | "
                   f"{', '.join(f.verified)} |")
    out += ["", "## Refused", "", "| family | class | why |", "|---|---|---|"]
    for f in FAMILIES:
        if not f.supported:
            out.append(f"| {f.name} | {', '.join(f.classes)} | {f.refuse} |")
    out += ["", "## Per family", ""]
    for f in FAMILIES:
        if not f.supported:
            continue
        parts = "; ".join(f"{l.name}: " + ", ".join(f"`{p}` ({v})" for p, v in l.passthrough.items())
                          for l in f.layouts)
        out += [f"### {f.name}", "",
                f"- copied from tuned: {parts}; any other tensor outside the LM too",
                f"- must match: {', '.join(f.match)}",
                f"- may differ (reported): {', '.join(f.may_differ)}",
                f"- vocabulary: {f.vocab}",
                f"- notes: {f.notes}"]
        if f.text_overrides:
            out.append("- lfm eval's text model: " + ", ".join(f"{k} = {v!r}" for k, v in f.text_overrides.items())
                       + " (what the MLLM's own forward computes on text)")
        if f.processor_needs:
            needs = " ".join(f.processor_needs)
            out.append(f"- processor: needs {needs}, which lfm's lock does not hold (`pip install {needs}`); without "
                       f"it `lfm eval` runs the language tasks and refuses visual tasks and `lfm compare` in one line")
        if f.examples:
            out.append(f"- e.g. {'; '.join(f.examples)}")
        missing = [c for c in CHECKS if c not in f.verified]
        out.append(f"- verified: {'; '.join(CHECKS[c] for c in f.verified)}"
                   + (f" (not: {', '.join(missing)})" if missing else ""))
        out.append("")
    out += ["## What the checks mean", ""] + [f"- **{k}**: {v}" for k, v in CHECKS.items()] + [
        "",
        "## A family not in the table",
        "",
        "lfm refuses it in one line naming its class and the nearest supported row. To add one: build a tiny "
        "base + MLLM with transformers' config classes, save it, list its keys (the LM's prefix and the parts "
        "around it in every layout transformers writes or loads), add a row to `FAMILY_ROWS` in "
        "`lfm/families.py` and a spec to `tests/families_support.py`, then regenerate this file.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(families_markdown(), end="")
