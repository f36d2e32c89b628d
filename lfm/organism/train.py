"""Train the organism: a tiny base LlamaForCausalLM on the language world, then the LLaVA tuned from it.

Stage 1 (``pretrain_base``): LlamaForCausalLM (hidden 96, 4 layers, 4 heads / 2 kv heads = GQA, untied
lm_head, ~0.5M parameters) trained on the four language tasks; loss on answer tokens only.
Stage 2 (``tune_llava``): LlavaForConditionalGeneration = frozen, seeded, randomly initialised CLIP vision
tower (32x32 image, 8x8 patches -> 16 image tokens) + MLP projector + the base LLM, all but the tower
trained on the visual tasks only, so the language ability is partly forgotten (the paper's phenomenon).

Both stages are deterministic for a seed on CPU (seeded torch, deterministic algorithms, 2 threads).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

from . import world
from .tokenizer import CHAT_TEMPLATE, build_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``lfm organism train``; defaults are the shipped organism's recipe."""

    seed: int = 0
    # base LLM (Llama); 4 heads / 2 kv heads exercises the GQA path of the merge engine
    hidden: int = 96
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    base_steps: int = 1500
    base_batch: int = 64
    base_lr: float = 3e-3
    base_items_per_task: int = 4000
    # share of pretraining examples prefixed by 16 random "unreadable" vectors at the <image> positions, so
    # the base learns to answer from the text and ignore content it cannot read (as web-scale LLMs do);
    # without it the hard-merged MLLM reads the projected image features as arbitrary words
    noise_prefix: float = 0.5
    # visual tuning (LLaVA); the LLM's lr decides how much language is forgotten
    tune_steps: int = 800
    tune_batch: int = 32
    tune_lr: float = 3e-4          # LLM parameters
    projector_lr: float = 1e-3
    adam_eps: float = 1e-4         # larger than the usual 1e-8: heavier-tailed change scores (prototype finding)
    tune_items_per_task: int = 2000
    tune_language_fraction: float = 0.0  # share of language examples mixed into tuning
    # vision tower (frozen, random)
    vision_hidden: int = 64
    vision_layers: int = 2
    patch: int = 8
    threads: int = 1  # tiny matmuls gain little from more; 1 thread stays fast on a busy machine


def _setup(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


def encode_example(tok: PreTrainedTokenizerFast, text: str, answer: str, image_tokens: int = 0) -> tuple[list[int], list[int]]:
    """Token ids of ``<s> text answer </s>`` and labels (-100 on the prompt, ids on ``answer </s>``).

    ``image_tokens`` > 0 expands the single ``<image>`` of ``text`` into that many (what LlavaProcessor does).
    """
    if image_tokens:
        text = text.replace(world.IMAGE_TOKEN, world.IMAGE_TOKEN * image_tokens, 1)
    prompt_ids = tok(text).input_ids
    ans_ids = tok(answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return prompt_ids + ans_ids, [-100] * len(prompt_ids) + ans_ids


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels: [B, T]."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), T), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        lab[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def make_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(world.all_words())


def make_image_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing at 32x32 (no resize needed; normalisation as CLIP)."""
    return CLIPImageProcessorPil(size={"shortest_edge": world.IMAGE_SIZE},
                                 crop_size={"height": world.IMAGE_SIZE, "width": world.IMAGE_SIZE})


def make_processor(tok: PreTrainedTokenizerFast, patch: int = 8) -> LlavaProcessor:
    return LlavaProcessor(image_processor=make_image_processor(), tokenizer=tok, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=world.IMAGE_TOKEN)


def base_config(tok: PreTrainedTokenizerFast, cfg: TrainConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


def noise_embeds(model, batch: dict[str, torch.Tensor], image_token_id: int, gen: torch.Generator) -> dict:
    """Replace ``input_ids`` by ``inputs_embeds`` whose ``<image>`` positions hold random vectors.

    Per example: a random direction with norm log-uniform in [0.2, 3] (token embeddings and projected image
    features have norm ~0.5-1), plus per-position noise of relative size uniform in [0, 1], so prefixes range
    from 16 near-identical vectors (a plain image background) to 16 unrelated ones.
    """
    ids = batch.pop("input_ids")
    emb = model.get_input_embeddings()(ids)  # [B, T, H]
    mask = ids == image_token_id  # [B, T]
    if mask.any():
        B, T, H = emb.shape
        norm = torch.exp(torch.empty(B, 1, 1).uniform_(math.log(0.2), math.log(3.0), generator=gen))
        base = torch.randn(B, 1, H, generator=gen)
        base = base / base.norm(dim=-1, keepdim=True)
        rel = torch.rand(B, 1, 1, generator=gen)
        noise = base + rel * torch.randn(B, T, H, generator=gen) / math.sqrt(H)
        noise = noise / noise.norm(dim=-1, keepdim=True) * norm
        emb = torch.where(mask[..., None], noise, emb)
    batch["inputs_embeds"] = emb
    return batch


def _train_loop(model, params_groups, batches, steps: int, desc: str, eps: float, clip: float = 1.0) -> list[float]:
    opt = torch.optim.AdamW(params_groups, betas=(0.9, 0.98), eps=eps, weight_decay=0.0)
    base_lrs = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, mininterval=2.0)
    for step in bar:
        f = _schedule(step, steps, warmup=max(1, steps // 20))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * f
        batch = next(batches)
        if callable(batch):  # a batch that needs the model (inputs_embeds built from current embeddings)
            batch = batch(model)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params_groups for p in g["params"]], clip)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    return losses


def _language_examples(tok, cfg: TrainConfig, n_per_task: int, seed: int, noise_prefix: float = 0.0):
    """Encoded language training examples; a ``noise_prefix`` share gets a 16-position ``<image>`` prefix."""
    items = world.train_items("language", n_per_task, seed=seed)
    rng = random.Random(f"noise-prefix-{seed}")
    n_img = (world.IMAGE_SIZE // cfg.patch) ** 2
    out = []
    for it in items:
        noisy = rng.random() < noise_prefix
        out.append(encode_example(tok, world.format_chat(it.prompt, noisy), it.answer, image_tokens=n_img if noisy else 0))
    return out


def pretrain_base(out_dir: str | Path, cfg: TrainConfig = TrainConfig()) -> dict:
    """Train the base LLM on the language world and save it (+ tokenizer) to ``out_dir``."""
    _setup(cfg.seed, cfg.threads)
    t0 = time.time()
    tok = make_tokenizer()
    examples = _language_examples(tok, cfg, cfg.base_items_per_task, cfg.seed, noise_prefix=cfg.noise_prefix)
    model = LlamaForCausalLM(base_config(tok, cfg))
    rng = random.Random(f"base-batches-{cfg.seed}")
    gen = torch.Generator().manual_seed(cfg.seed)
    image_id = tok.convert_tokens_to_ids(world.IMAGE_TOKEN)

    def batches():
        while True:
            b = _batch(rng.sample(examples, cfg.base_batch), tok.pad_token_id)
            yield lambda m, b=b: noise_embeds(m, b, image_id, gen)

    losses = _train_loop(model, [{"params": list(model.parameters()), "lr": cfg.base_lr}], batches(),
                         cfg.base_steps, "pretrain base", eps=1e-8)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"final_loss": float(np.mean(losses[-50:])), "seconds": time.time() - t0,
            "params": sum(p.numel() for p in model.parameters())}


def _vision_config(cfg: TrainConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                            num_hidden_layers=cfg.vision_layers, num_attention_heads=2, num_channels=3,
                            image_size=world.IMAGE_SIZE, patch_size=cfg.patch, projection_dim=cfg.vision_hidden)


def pixel_values(processor: LlavaProcessor, images: list[np.ndarray]) -> torch.Tensor:
    """[N, 3, 32, 32] float pixel values from uint8 RGB arrays, through the processor's image processor."""
    pil = [Image.fromarray(im) for im in images]
    return processor.image_processor(pil, return_tensors="pt")["pixel_values"]


def build_llava(base_dir: str | Path, cfg: TrainConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """LLaVA whose LLM is the base model's weights, with a seeded random CLIP tower and a fresh projector."""
    base = LlamaForCausalLM.from_pretrained(base_dir)
    tok = PreTrainedTokenizerFast.from_pretrained(base_dir)
    processor = make_processor(tok, cfg.patch)
    n_img = (world.IMAGE_SIZE // cfg.patch) ** 2
    config = LlavaConfig(vision_config=_vision_config(cfg), text_config=base.config,
                         image_token_index=tok.convert_tokens_to_ids(world.IMAGE_TOKEN), image_seq_length=n_img,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=False)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(base.model.state_dict())
    model.lm_head.load_state_dict(base.lm_head.state_dict())
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    return model, processor


def tune_llava(base_dir: str | Path, out_dir: str | Path, cfg: TrainConfig = TrainConfig()) -> dict:
    """Visually instruction-tune the LLaVA built from ``base_dir`` and save it (+ processor) to ``out_dir``."""
    _setup(cfg.seed, cfg.threads)
    t0 = time.time()
    model, processor = build_llava(base_dir, cfg)
    tok = processor.tokenizer
    n_img = model.config.image_seq_length
    items = world.train_items("visual", cfg.tune_items_per_task, seed=cfg.seed)
    pix = pixel_values(processor, [it.image for it in items])
    vis = [encode_example(tok, world.format_chat(it.prompt, True), it.answer, image_tokens=n_img) for it in items]
    lang = []
    if cfg.tune_language_fraction > 0:
        lang = _language_examples(tok, cfg, 1000, seed=cfg.seed + 1000)
    rng = random.Random(f"tune-batches-{cfg.seed}")
    n_lang = int(round(cfg.tune_batch * cfg.tune_language_fraction))

    def batches():
        while True:
            idx = rng.sample(range(len(vis)), cfg.tune_batch - n_lang)
            ex = [vis[i] for i in idx] + (rng.sample(lang, n_lang) if n_lang else [])
            b = _batch(ex, tok.pad_token_id)
            b["pixel_values"] = pix[idx]
            yield b

    llm = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    proj = list(model.model.multi_modal_projector.parameters())
    groups = [{"params": llm, "lr": cfg.tune_lr}, {"params": proj, "lr": cfg.projector_lr}]
    losses = _train_loop(model, groups, batches(), cfg.tune_steps, "tune llava", eps=cfg.adam_eps)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"final_loss": float(np.mean(losses[-50:])), "seconds": time.time() - t0}


def train(out_dir: str | Path, cfg: TrainConfig = TrainConfig()) -> dict:
    """Both stages: ``out_dir/base`` (LlamaForCausalLM) and ``out_dir/tuned`` (LlavaForConditionalGeneration)."""
    out = Path(out_dir)
    b = pretrain_base(out / "base", cfg)
    t = tune_llava(out / "base", out / "tuned", cfg)
    return {"config": asdict(cfg), "base": b, "tuned": t}
