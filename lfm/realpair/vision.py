"""The vision tower: a tiny CLIP ViT (32x32 images, 8x8 patches), pretrained as a classifier.

A random tower would make the visual skill live entirely in the projector and the LLM; a web-scale CLIP is
not to be had here. So the tower is first trained to classify the visual training images of every task
(one linear head per task on the mean of its patch features: the features the LLaVA reads), then frozen.
Its heads' accuracy on held-out images is what the tower can see of each task: a ceiling for the LLaVA
(the build's checks call a task whose ceiling is below the bar tower-limited, not failed).
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from .config import BuildConfig
from .data import CHOICES, VisualItem


def vision_config(cfg: BuildConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 4,
                            num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                            num_channels=3, image_size=cfg.image_size, patch_size=cfg.patch,
                            projection_dim=cfg.vision_hidden)


def image_processor(cfg: BuildConfig) -> CLIPImageProcessorPil:
    """CLIP normalisation at the tower's size (the images are already that size)."""
    return CLIPImageProcessorPil(size={"shortest_edge": cfg.image_size},
                                 crop_size={"height": cfg.image_size, "width": cfg.image_size})


def pixel_values(processor: CLIPImageProcessorPil, images: list[np.ndarray]) -> torch.Tensor:
    """[N, 3, S, S] pixel values from uint8 RGB arrays."""
    return processor([Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]


def pretrain_tower(cfg: BuildConfig, items: list[VisualItem],
                   held_out: list[VisualItem] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Train a CLIPVisionModel (+ per-task heads, then dropped) on ``items``. Returns (state dict, stats);
    stats["held_out_accuracy"]: {task: accuracy of the heads on ``held_out``}."""
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    tower = CLIPVisionModel(vision_config(cfg))
    tasks = sorted({it.task for it in items})
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(cfg.vision_hidden, len(CHOICES[t])) for t in tasks})
    pix = pixel_values(image_processor(cfg), [it.image for it in items])
    labels = torch.tensor([CHOICES[it.task].index(it.answer) for it in items])
    task_of = [it.task for it in items]
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.vision_lr, total_steps=max(cfg.vision_steps, 2), pct_start=0.1)
    rng = random.Random(f"vision-{cfg.seed}")
    by_task = [[i for i, t in enumerate(task_of) if t == task] for task in tasks]
    tower.train()
    correct, seen = 0, 0
    bar = tqdm(range(cfg.vision_steps), desc="vision tower", mininterval=2.0)
    for step in bar:
        idx = _balanced_batch(by_task, cfg.vision_batch, rng) if cfg.vision_balanced else \
            rng.sample(range(len(items)), min(cfg.vision_batch, len(items)))
        feats = tower(pixel_values=pix[idx]).last_hidden_state[:, 1:].mean(1)  # [B, hidden], patches only
        loss = 0.0
        for t in tasks:
            sel = [j for j, i in enumerate(idx) if task_of[i] == t]
            if sel:
                logits = heads[t](feats[sel])
                loss = loss + torch.nn.functional.cross_entropy(logits, labels[[idx[j] for j in sel]], reduction="sum")
                if step >= cfg.vision_steps * 3 // 4:
                    correct += int((logits.argmax(-1) == labels[[idx[j] for j in sel]]).sum())
                    seen += len(sel)
        loss = loss / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()
    stats = {"seconds": round(time.time() - t0, 1), "final_loss": loss.item(),
             "train_accuracy_last_quarter": correct / seen if seen else None,
             "held_out_accuracy": held_out_accuracy(tower, heads, cfg, held_out)}
    return {k: v.detach().clone() for k, v in tower.state_dict().items()}, stats


def _balanced_batch(by_task: list[list[int]], batch: int, rng: random.Random) -> list[int]:
    """``batch`` indices, as many from each task's list as the others (digits has 1497 training images, a
    drawn task as many as asked: an unbalanced batch would show the tower few digits)."""
    per = batch // len(by_task)
    return [i for pool in by_task for i in rng.sample(pool, min(per, len(pool)))]


@torch.no_grad()
def held_out_accuracy(tower, heads, cfg: BuildConfig, items: list[VisualItem]) -> dict[str, float]:
    """{task: fraction of ``items`` of that task its head classifies right} (tasks without a head: none)."""
    out = {}
    for task in heads:
        sel = [it for it in items if it.task == task]
        if not sel:
            continue
        feats = tower(pixel_values=pixel_values(image_processor(cfg), [it.image for it in sel])).last_hidden_state
        pred = heads[task](feats[:, 1:].mean(1)).argmax(-1)
        out[task] = float((pred == torch.tensor([CHOICES[task].index(it.answer) for it in sel])).float().mean())
    return out
