"""Tiny real checkpoints for every supported row of lfm's family table (tests/test_families.py).

For a family: a random base causal LM built from transformers' own config class (save_pretrained), and the
family's MLLM built on it: its text config is the base's (its own text model_type where the family has one,
e.g. qwen2_vl_text), the vocabulary grows by EXTRA rows holding the family's image tokens, and its LM tensors
are the base's plus a known seeded delta (``fixtures.tuned_lm_state``). The LM weights are put in through
transformers' own handles on the model (``get_decoder()``, ``get_output_embeddings()``), not through key names,
so the checkpoints do not depend on lfm's table. Each MLLM is written in each layout of its row:
``save_pretrained`` and, where it differs, the in-memory names written with safetensors directly (what other
tools save; transformers loads both).

A tokenizer (WordLevel over the base vocabulary plus the family's special tokens) and, where the family's
processor can be built here, the processor (image processor + tokenizer) are saved into the tuned directory:
``lfm merge`` copies them, and the test loads ``AutoProcessor`` from the merged output. A processor that needs a
video processor needs torchvision, which the lock does not hold: those families make their image inputs with
the image processor and expand the image token as their processor does (``inputs`` below).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save_file

from fixtures import read_state, tuned_lm_state

H, LAYERS, HEADS, KV, FFN, VOCAB = 32, 2, 4, 2, 64, 128
EXTRA = 8  # rows the MLLM adds to the base vocabulary: its image tokens, then spare rows
IMAGE = 28  # pixels a side of the test image
SAVED, MEMORY = "save_pretrained", "in-memory names"

CLIP = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, image_size=IMAGE, patch_size=14, projection_dim=16)
SIGLIP = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, image_size=IMAGE, patch_size=14)
QWEN_VISION = dict(depth=1, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


def base_config(model_type: str, **overrides):
    from transformers import AutoConfig

    kw = dict(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV,
              intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def special_ids(specials) -> dict[str, int]:
    return {s: VOCAB + i for i, s in enumerate(specials)}


def tokenizer(specials, roles: dict[str, str] | None = None):
    """A WordLevel tokenizer: <pad> <s> </s> <unk> w4 .. w127, then `specials` at VOCAB, VOCAB + 1, ...
    roles: tokenizer attributes a processor reads ({'image_token': '<image>', ...})."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    vocab.update(special_ids(specials))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens=roles or {})
    fast.add_special_tokens({"additional_special_tokens": list(specials)})
    return fast


def chat_template(image: str) -> str:
    """A minimal chat template: each image item becomes the family's image placeholder `image` (which its
    processor expands), text items their text; the generation prompt is 'w9'."""
    return ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
            "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image + " {% else %}{{ c['text'] }}"
            "{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}w9{% endif %}")


def sample_image(size: int = IMAGE, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


# ------------------------------------------------------------------------------------------------ specs

@dataclass(frozen=True)
class Spec:
    """How to build one family's tiny pair, and how to make image inputs for its merged model."""

    row: str  # the family's name in lfm.families
    model_type: str  # the MLLM's model_type
    base_type: str  # the base causal LM's model_type
    specials: tuple[str, ...]  # the MLLM's added tokens, at ids VOCAB, VOCAB + 1, ...
    mllm: Callable[[dict], dict]  # special token ids -> the MLLM config's fields besides text_config
    placeholder: str  # what its chat template writes for an image (its processor expands it); "" when none
    processor: Callable | None = None  # tokenizer -> the family's processor
    # without a processor (its class needs a video processor, hence torchvision): the image processor saved
    # beside the tokenizer, and the text with the image tokens expanded as the processor would, from its output
    image_processor: Callable | None = None
    expand: Callable | None = None  # image processor output -> text
    base_kw: dict = field(default_factory=dict)
    text_kw: dict = field(default_factory=dict)  # text-config fields of the MLLM that differ from the base's
    roles: dict = field(default_factory=dict)  # tokenizer attributes its processor reads
    layouts: tuple[str, ...] = (SAVED, MEMORY)
    tied: bool = False  # top-level tie_word_embeddings (the base is tied too)
    image_size: int = IMAGE  # of the test image
    consumed: tuple[str, ...] = ()  # image processor outputs its processor reads and does not pass on


def _llava(ids, **extra):
    return dict(vision_config=CLIP, image_token_index=ids["<image>"], vision_feature_select_strategy="default",
                **extra)


def _pil(name, **kw):
    def build():
        import transformers

        return getattr(transformers, f"{name}ImageProcessorPil")(**kw)
    return build


def _llava_processor(cls_name, image_processor):
    def build(tok):
        import transformers

        return getattr(transformers, cls_name)(image_processor=image_processor(), tokenizer=tok, patch_size=14,
                                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return build


def _qwen(vision_extra):
    def mllm(ids):
        return dict(vision_config={**QWEN_VISION, **vision_extra}, image_token_id=ids["<|image_pad|>"],
                    video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                    vision_end_token_id=ids["<|vision_end|>"])
    return mllm


def _qwen_text(image) -> str:
    """Qwen2VLProcessor: <|image_pad|> once per merged patch, grid_thw.prod() / merge_size**2."""
    return "<|vision_start|>" + "<|image_pad|>" * (int(image["image_grid_thw"].prod()) // 4) + "<|vision_end|> w5 w6"


CLIP_IMAGES = _pil("CLIP", size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
QWEN_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_IMAGES = _pil("Qwen2VL", min_pixels=IMAGE * IMAGE, max_pixels=IMAGE * IMAGE, patch_size=14, merge_size=2,
                   temporal_patch_size=2)
MROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}}  # head_dim 8
IDEFICS_SPECIALS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
IDEFICS_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=IMAGE, patch_size=14)


def _idefics(ids):
    return dict(vision_config=IDEFICS_VISION, scale_factor=2, image_token_id=ids["<image>"])


def _idefics3_processor(tok):
    import transformers

    ip = transformers.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE},
                                                max_image_size={"longest_edge": IMAGE})
    return transformers.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=1)


def _idefics2_processor(tok):
    import transformers

    ip = transformers.Idefics2ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE,
                                                                               "shortest_edge": IMAGE})
    return transformers.Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)


def _aya_processor(tok):
    import transformers

    ip = transformers.GotOcr2ImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, crop_to_patches=False)
    return transformers.AyaVisionProcessor(image_processor=ip, tokenizer=tok, patch_size=14, img_size=IMAGE,
                                           downsample_factor=2)


def _deepseek_vl_processor(tok):
    import transformers

    ip = transformers.DeepseekVLImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    return transformers.DeepseekVLProcessor(image_processor=ip, tokenizer=tok, num_image_tokens=(IMAGE // 14) ** 2)


def _gemma3_processor(tok):
    import transformers

    ip = transformers.Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    return transformers.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4)


def _paligemma_processor(tok):
    import transformers

    ip = transformers.SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    ip.image_seq_length = (IMAGE // 14) ** 2
    return transformers.PaliGemmaProcessor(image_processor=ip, tokenizer=tok)


SPECS: dict[str, Spec] = {s.row: s for s in (
    Spec("LLaVA", "llava", "llama", ("<image>",), _llava, "<image>",
         processor=_llava_processor("LlavaProcessor", CLIP_IMAGES)),
    Spec("LLaVA-Next", "llava_next", "llama", ("<image>",),
         lambda ids: _llava(ids, image_grid_pinpoints=[[IMAGE, IMAGE], [IMAGE, 2 * IMAGE]]), "<image>",
         processor=_llava_processor("LlavaNextProcessor", _pil(
             "LlavaNext", size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
             image_grid_pinpoints=[[IMAGE, IMAGE], [IMAGE, 2 * IMAGE]]))),
    # LlavaOnevisionProcessor: base features (2 x 2 patches) + unpadded anyres features (2 x 2) + a newline per row (2)
    Spec("LLaVA-OneVision", "llava_onevision", "qwen2", ("<image>", "<video>"),
         lambda ids: dict(vision_config=SIGLIP, image_token_index=ids["<image>"], video_token_index=ids["<video>"],
                          image_grid_pinpoints=[[IMAGE, IMAGE]], vision_aspect_ratio="anyres_max_1"), "",
         image_processor=_pil("LlavaOnevision", size={"height": IMAGE, "width": IMAGE},
                              image_grid_pinpoints=[[IMAGE, IMAGE]]),
         expand=lambda image: "<image>" * (4 + 4 + 2) + " w5 w6"),
    Spec("Qwen2-VL", "qwen2_vl", "qwen2", QWEN_SPECIALS, _qwen({"embed_dim": 16, "hidden_size": H}), "",
         image_processor=QWEN_IMAGES, expand=_qwen_text, text_kw=MROPE),
    Spec("Qwen2.5-VL", "qwen2_5_vl", "qwen2", QWEN_SPECIALS,
         _qwen({"hidden_size": 16, "intermediate_size": 32, "out_hidden_size": H, "fullatt_block_indexes": [0],
                "window_size": 56}), "", image_processor=QWEN_IMAGES, expand=_qwen_text, text_kw=MROPE),
    Spec("Qwen3-VL", "qwen3_vl", "qwen3", QWEN_SPECIALS,
         _qwen({"hidden_size": 16, "intermediate_size": 32, "out_hidden_size": H, "num_position_embeddings": 16,
                "deepstack_visual_indexes": [0]}), "", base_kw=dict(head_dim=8),
         image_processor=QWEN_IMAGES, expand=_qwen_text,
         text_kw={"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [2, 1, 1],
                                      "mrope_interleaved": True}}, layouts=(SAVED,)),
    Spec("Idefics3", "idefics3", "llama", IDEFICS_SPECIALS, _idefics, "<image>", processor=_idefics3_processor,
         layouts=(SAVED,)),
    # SmolVLMProcessor, one image without splitting: image_seq_len = (28 / 14)**2 / scale_factor**2 = 1
    Spec("SmolVLM", "smolvlm", "llama", IDEFICS_SPECIALS, _idefics, "",
         image_processor=_pil("SmolVLM", do_image_splitting=False, size={"longest_edge": IMAGE},
                              max_image_size={"longest_edge": IMAGE}),
         expand=lambda image: "<fake_token_around_image><global-img><image><fake_token_around_image> w5 w6",
         text_kw={"rope_parameters": {"rope_type": "default", "rope_theta": 273768.0}}, layouts=(SAVED,)),
    Spec("Gemma 3", "gemma3", "gemma3_text", ("<start_of_image>", "<image_soft_token>", "<end_of_image>"),
         lambda ids: dict(vision_config=SIGLIP, mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"],
                          eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"]),
         "<start_of_image>", base_kw=dict(head_dim=8, tie_word_embeddings=True),
         roles={"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"},
         processor=_gemma3_processor, tied=True),
    Spec("PaliGemma", "paligemma", "gemma", ("<image>",),
         lambda ids: dict(vision_config={k: v for k, v in SIGLIP.items() if k != "model_type"}, projection_dim=H,
                          hidden_size=H, image_token_index=ids["<image>"], vocab_size=VOCAB + EXTRA),
         "", base_kw=dict(head_dim=8, tie_word_embeddings=True), roles={"image_token": "<image>"},
         processor=_paligemma_processor, tied=True),
    # PixtralProcessor (needs torchvision): one [IMG] per merged patch of a row, [IMG_BREAK] after each row but
    # the last, [IMG_END]; a 56-pixel image (2 x 2 merged patches: one image token trips Mistral3's feature split)
    Spec("Mistral 3", "mistral3", "mistral", ("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
         lambda ids: dict(vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=2 * IMAGE, patch_size=14, head_dim=8),
                          spatial_merge_size=2, image_token_index=ids["[IMG]"]), "",
         image_processor=_pil("Pixtral", size={"longest_edge": 2 * IMAGE}, patch_size=14),
         expand=lambda image: "[IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END] w5 w6", image_size=2 * IMAGE),
    # InternVLProcessor (needs a video processor): <img>, image_seq_length <IMG_CONTEXT>, </img>
    Spec("InternVL", "internvl", "qwen2", ("<img>", "</img>", "<IMG_CONTEXT>"),
         lambda ids: dict(vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=[IMAGE, IMAGE], patch_size=[14, 14]),
                          image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=1), "",
         image_processor=_pil("GotOcr2", size={"height": IMAGE, "width": IMAGE}, crop_to_patches=False),
         expand=lambda image: "<img><IMG_CONTEXT></img> w5 w6", base_kw=dict(tie_word_embeddings=True), tied=True,
         consumed=("num_patches",)),
    # rows proven without an image (no processor or expansion written here yet): text-only generation
    Spec("LLaVA-NeXT-Video", "llava_next_video", "llama", ("<image>", "<video>"),
         lambda ids: _llava(ids, image_grid_pinpoints=[[IMAGE, IMAGE]], video_token_index=ids["<video>"]), ""),
    Spec("VipLLaVA", "vipllava", "llama", ("<image>",),
         lambda ids: dict(vision_config=CLIP, image_token_index=ids["<image>"], vision_feature_layers=[-1]),
         "<image>", processor=_llava_processor("LlavaProcessor", CLIP_IMAGES)),
    Spec("Idefics2", "idefics2", "mistral", IDEFICS_SPECIALS,
         lambda ids: dict(vision_config=IDEFICS_VISION, image_token_id=ids["<image>"],
                          perceiver_config=dict(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                                                resampler_head_dim=8, num_key_value_heads=1, hidden_size=H)),
         "<image>", processor=_idefics2_processor, layouts=(SAVED,)),
    Spec("Aya Vision", "aya_vision", "cohere2",
         ("<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"),
         lambda ids: dict(vision_config=SIGLIP, downsample_factor=2, image_token_index=ids["<|IMG_PATCH|>"]), "<image>",
         processor=_aya_processor,
         base_kw=dict(head_dim=8, tie_word_embeddings=True), tied=True),
    Spec("GOT-OCR2", "got_ocr2", "qwen2", ("<imgpad>",),
         lambda ids: dict(vision_config=dict(hidden_size=16, output_channels=8, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=16,
                                             global_attn_indexes=[0], mlp_dim=32, window_size=2),
                          image_token_index=ids["<imgpad>"]), "", base_kw=dict(tie_word_embeddings=True), tied=True),
    Spec("DeepSeek-VL", "deepseek_vl", "llama", ("<image_placeholder>",),
         lambda ids: dict(vision_config=SIGLIP, image_token_id=ids["<image_placeholder>"]), "<image_placeholder>",
         processor=_deepseek_vl_processor, roles={"image_token": "<image_placeholder>"}, layouts=(SAVED,)),
    Spec("Cohere2-Vision", "cohere2_vision", "cohere2", ("<image>",),
         lambda ids: dict(vision_config=SIGLIP, downsample_factor=2, image_token_id=ids["<image>"]), "",
         base_kw=dict(head_dim=8, tie_word_embeddings=True), tied=True, layouts=(SAVED,)),
)}


# ------------------------------------------------------------------------------------------------ writers

def write_base(out: Path, spec: Spec, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    cfg = base_config(spec.base_type, **spec.base_kw)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(out)
    return Path(out)


def mllm_config(spec: Spec, base_dir: Path):
    import transformers
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(base_dir)
    text = base.to_dict()
    for key in ("architectures", "transformers_version", "_name_or_path", "dtype"):
        text.pop(key, None)
    text["vocab_size"] = VOCAB + EXTRA
    cls = transformers.CONFIG_MAPPING[spec.model_type]
    text_cls = cls.sub_configs["text_config"]
    text["model_type"] = spec.base_type if text_cls is AutoConfig else text_cls.model_type
    text.update(spec.text_kw)
    kw = spec.mllm(special_ids(spec.specials))
    vision = dict(kw.pop("vision_config"))
    vision_cls = cls.sub_configs["vision_config"]
    if vision_cls is not AutoConfig:
        vision.setdefault("model_type", vision_cls.model_type)
    kw.setdefault("tie_word_embeddings", spec.tied)
    return cls(text_config=text, vision_config=vision, **kw)


def lm_handles(model) -> dict[str, torch.nn.Parameter]:
    """The model's LM tensors under the base causal LM's names, through transformers' own handles: the decoder
    ('model.' + its state_dict names) and the output embedding ('lm_head.weight') when it is not tied."""
    out = {"model." + k: v for k, v in model.get_decoder().state_dict(keep_vars=True).items()}
    head = model.get_output_embeddings().weight
    if not any(head is v for v in out.values()):
        out["lm_head.weight"] = head
    return out


def write_tuned(out: Path, spec: Spec, base_dir: Path, layout: str, seed: int = 1) -> Path:
    """The family's MLLM on `base_dir` with LM = base + delta(seed), in `layout`, with tokenizer and processor."""
    import transformers

    cfg = mllm_config(spec, base_dir)
    torch.manual_seed(seed + 1000)
    model = getattr(transformers, _class_of(spec))(cfg).eval()
    lm = tuned_lm_state(read_state(base_dir), seed, extra_vocab=EXTRA)
    handles = lm_handles(model)
    assert set(handles) == set(lm), f"{spec.row}: LM {sorted(set(handles) ^ set(lm))[:4]} differ from the base"
    with torch.no_grad():
        for name, param in handles.items():
            param.copy_(lm[name])
    out = Path(out)
    if layout == SAVED:
        model.save_pretrained(out)
    else:
        out.mkdir(parents=True)
        model.config.save_pretrained(out)
        state = model.state_dict()
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight")  # tied: the embedding (what save_pretrained leaves out too)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    tok = tokenizer(spec.specials, spec.roles)
    if spec.processor is not None:
        processor = spec.processor(tok)
        processor.chat_template = chat_template(spec.placeholder)
        processor.save_pretrained(out)
    else:
        tok.save_pretrained(out)
    if spec.image_processor is not None:
        spec.image_processor().save_pretrained(out)
    return out


def _class_of(spec: Spec) -> str:
    from lfm.families import FAMILIES

    return next(f.classes[0] for f in FAMILIES if f.name == spec.row)


def has_image_path(spec: Spec) -> bool:
    return spec.processor is not None or spec.image_processor is not None


def image_inputs(spec: Spec, directory: Path) -> dict:
    """Generate kwargs for one image and a prompt, made from `directory`'s own files: AutoProcessor where the
    family's processor is buildable here, else AutoImageProcessor + AutoTokenizer and the spec's expansion;
    a prompt without an image for a spec that has neither."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if not has_image_path(spec):
        return dict(AutoTokenizer.from_pretrained(directory)("w5 w6 w7", return_tensors="pt"))
    if spec.processor is not None:
        processor = AutoProcessor.from_pretrained(directory)
        inputs = processor(images=[sample_image(spec.image_size)], text=[f"{spec.placeholder} w5 w6".strip()],
                           return_tensors="pt")
        return {k: v for k, v in inputs.items() if k != "labels"}
    image_processor = AutoImageProcessor.from_pretrained(directory)
    image = dict(image_processor(images=[sample_image(spec.image_size)], return_tensors="pt"))
    text = spec.expand(image)
    image = {k: v for k, v in image.items() if k not in spec.consumed}
    return {**AutoTokenizer.from_pretrained(directory)(text, return_tensors="pt"), **image}


class FamilyZoo:
    """Lazily built pairs per (family, layout) under one root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._bases: dict[str, Path] = {}
        self._tuned: dict[tuple[str, str], Path] = {}

    def base(self, row: str) -> Path:
        if row not in self._bases:
            spec = SPECS[row]
            self._bases[row] = write_base(self.root / f"{_slug(row)}-base", spec)
        return self._bases[row]

    def tuned(self, row: str, layout: str) -> Path:
        if (row, layout) not in self._tuned:
            self._tuned[row, layout] = write_tuned(self.root / f"{_slug(row)}-{_slug(layout)}", SPECS[row],
                                                   self.base(row), layout)
        return self._tuned[row, layout]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


# ------------------------------------------------------------------------------------------------ a hub cache

def hub_cache(cache: Path, repo_id: str, source: Path, revision: str = "0" * 39 + "1",
              repo_type: str = "model") -> Path:
    """Lay `source`'s files (and folders) out as huggingface_hub's cache holds a downloaded repo (HF_HUB_CACHE):
    <repo_type>s--org--name/blobs/<sha256> with the bytes, snapshots/<revision>/<path> as relative links to them,
    and refs/main naming the revision. Returns the snapshot directory."""
    import hashlib
    import os

    repo = Path(cache) / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(f for f in Path(source).rglob("*") if f.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot
