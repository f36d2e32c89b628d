"""The LLaVA tuned from the base: build it, align the projector (LLM frozen), then tune LLM + projector.

The tokenizer gains a real ``<image>`` token, so the LLaVA's vocabulary is one row larger than the base's
(the new embedding row starts as the mean of the others, transformers' ``resize_token_embeddings``). Every
visual training example is one chat turn, rendered by the processor's chat template (SmolLM2's, with its
default system prompt, plus image parts), answered with one word; the loss covers the answer and ``<|im_end|>``.

Text-only examples (``cfg.text_share`` of each tuning batch, as LLaVA mixes text-only instruction data into
its visual instruction tuning) are either an instruction turn without an image (a WordNet definition; loss
on the answer and ``<|im_end|>``) or replay text language-modelled as a whole (loss on every token); each is
at most ``cfg.text_tokens`` tokens. A step's loss is the visual rows' token-mean loss and the text rows',
weighted by their row counts (so long replay rows do not drown the one-word visual answers); a batch
without text rows is exactly the visual-only recipe.
Deterministic for a seed on CPU (seeded torch, deterministic algorithms, fixed thread count).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (AutoTokenizer, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor)

from .config import BuildConfig
from .data import TextItem, VisualItem, text_items
from .vision import image_processor, pixel_values, vision_config

IMAGE_TOKEN = "<image>"
END_OF_TURN = "<|im_end|>"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's own template (default system prompt), with image parts rendered as <image>
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def setup(cfg: BuildConfig) -> None:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)


def make_processor(base_dir: str | Path, cfg: BuildConfig) -> LlavaProcessor:
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return LlavaProcessor(image_processor=image_processor(cfg), tokenizer=tok, patch_size=cfg.patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def build_llava(base_dir: str | Path, tower_state: dict, processor: LlavaProcessor,
                cfg: BuildConfig) -> LlavaForConditionalGeneration:
    """The base LLM (vocabulary + 1 row for <image>), the pretrained tower, a fresh MLP projector."""
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(processor.tokenizer), mean_resizing=True)
    n_img = (cfg.image_size // cfg.patch) ** 2
    config = LlavaConfig(vision_config=vision_config(cfg), text_config=base.config,
                         image_token_index=processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=n_img, vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=base.config.tie_word_embeddings)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(base.model.state_dict())
    model.lm_head.load_state_dict(base.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(tower_state)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    return model


def encode(processor: LlavaProcessor, item: VisualItem, n_img: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one chat turn: -100 on the prompt, ids on ``answer<|im_end|>``."""
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tok(text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_img, 1), add_special_tokens=False).input_ids
    answer = tok(item.answer + END_OF_TURN, add_special_tokens=False).input_ids
    return prompt + answer, [-100] * len(prompt) + answer


def encode_text(processor: LlavaProcessor, item: TextItem, max_tokens: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) of a text-only example: an instruction turn (-100 on the prompt; None when it is
    longer than ``max_tokens``: a cut answer would teach the turn never to end) or, when ``item.prompt`` is
    None, replay text cut to ``max_tokens`` (labels = ids)."""
    tok = processor.tokenizer
    if item.prompt is None:
        ids = tok(item.answer, add_special_tokens=False).input_ids[:max_tokens]
        return ids, list(ids)
    text = processor.apply_chat_template([{"role": "user", "content": item.prompt}], add_generation_prompt=True,
                                         tokenize=False)
    prompt = tok(text, add_special_tokens=False).input_ids
    answer = tok(item.answer + END_OF_TURN, add_special_tokens=False).input_ids
    if len(prompt) + len(answer) > max_tokens:
        return None
    return prompt + answer, [-100] * len(prompt) + answer


def tuning_text(cfg: BuildConfig) -> list[TextItem]:
    """The text-only tuning items: ``cfg.text_items`` of each of ``cfg.text_kinds`` (none when ``cfg.text_share``
    is 0)."""
    return [it for kind in cfg.kinds() for it in text_items(kind, cfg.text_items)] if cfg.text_share else []


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int, T: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels: [B, T], right-padded to the fixed length T.

    One T for every batch: on CPU a new sequence length costs a slow first step (measured 10-20 s vs 2.6 s).
    """
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), T), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)], lab[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def _lr_factor(step: int, total: int) -> float:
    """Linear warmup (5%) then cosine decay to 0."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def draw_pool(items: list[VisualItem], weights: dict[str, int]) -> list[int]:
    """The indices a batch draws its visual rows from: each item ``weights[task]`` times (default once), so a
    task of weight 2 is drawn twice as often; with no weights, every index once (the uniform draw).

    >>> from types import SimpleNamespace as I
    >>> draw_pool([I(task="digits"), I(task="colour"), I(task="digits")], {"digits": 2})
    [0, 0, 1, 2, 2]
    """
    return [i for i, it in enumerate(items) for _ in range(weights.get(it.task, 1))]


def run_stage(model, processor, items: list[VisualItem], groups: list[dict], steps: int, batch: int,
              desc: str, seed: int, text: list[TextItem] = (), text_share: float = 0.0, text_tokens: int = 64,
              weights: dict[str, int] | None = None) -> dict:
    """Train the parameters in ``groups`` ([{"params", "lr"}]) for ``steps`` batches: ``batch`` rows each,
    round(text_share * batch) of them text-only (``text``), the rest visual (``items``, drawn by task
    ``weights``)."""
    t0 = time.time()
    n_img = model.config.image_seq_length
    examples = [encode(processor, it, n_img) for it in items]
    T = max(len(x) for x, _ in examples)
    pix = pixel_values(processor.image_processor, [it.image for it in items])
    texts = [e for e in (encode_text(processor, it, text_tokens) for it in text) if e and len(e[0]) > 1]
    n_text = round(text_share * batch) if texts else 0
    T_text = max((len(x) for x, _ in texts), default=0)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    pool = draw_pool(items, weights or {})
    rng, text_rng = random.Random(f"{desc}-{seed}"), random.Random(f"{desc}-text-{seed}")
    losses, text_losses = [], []
    pad = processor.tokenizer.pad_token_id
    model.train()
    bar = tqdm(range(steps), desc=desc, mininterval=2.0)
    for step in bar:
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * _lr_factor(step, steps)
        idx = [pool[j] for j in rng.sample(range(len(pool)), min(batch - n_text, len(pool)))]
        loss = model(**_batch([examples[i] for i in idx], pad, T), pixel_values=pix[idx]).loss
        if n_text:
            pick = text_rng.sample(range(len(texts)), min(n_text, len(texts)))
            text_loss = model(**_batch([texts[i] for i in pick], pad, T_text)).loss
            text_losses.append(text_loss.item())
            loss = (len(idx) * loss + len(pick) * text_loss) / (len(idx) + len(pick))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    model.eval()
    out = {"seconds": round(time.time() - t0, 1), "steps": steps,
           "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "first_loss": losses[0] if losses else None}
    if n_text:
        out.update(text_rows=n_text, text_examples=len(texts), first_text_loss=text_losses[0],
                   final_text_loss=sum(text_losses[-20:]) / len(text_losses[-20:]))
    return out


def align(model, processor, items, cfg: BuildConfig) -> dict:
    """Stage 1: the projector alone learns to speak the frozen LLM's embedding language."""
    for p in model.parameters():
        p.requires_grad_(False)
    proj = list(model.model.multi_modal_projector.parameters())
    for p in proj:
        p.requires_grad_(True)
    return run_stage(model, processor, items, [{"params": proj, "lr": cfg.align_lr}], cfg.align_steps,
                     cfg.align_batch, "align projector", cfg.seed)


def tune(model, processor, items, cfg: BuildConfig) -> dict:
    """Stage 2: visual instruction tuning of the whole LLM and the projector (tower frozen), text-only items
    mixed in (``cfg.text_share``)."""
    llm = [p for n, p in model.named_parameters() if not n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
    proj = list(model.model.multi_modal_projector.parameters())
    for p in llm + proj:
        p.requires_grad_(True)
    groups = [{"params": llm, "lr": cfg.tune_lr}, {"params": proj, "lr": cfg.projector_lr}]
    return run_stage(model, processor, items, groups, cfg.tune_steps, cfg.tune_batch, "tune llava", cfg.seed,
                     text=tuning_text(cfg), text_share=cfg.text_share, text_tokens=cfg.text_tokens,
                     weights=cfg.weights())
