"""lm-eval's HFLM, with multiple-choice requests scored from one pass over their shared context.

A multiple-choice item is k loglikelihood requests with the same context tokens and k continuations. Stock
HFLM runs k full sequences (context + continuation) and a log-softmax over the vocabulary at every position;
on a 135M model on CPU that is the bulk of a language task's time. ``SharedContextHFLM`` instead, for a batch
of items:

    1. runs every item's context once (left-padded, explicit position ids, KV cache kept; logits only at the
       last context position, which predict each continuation's first token),
    2. runs the continuations (but their last token) on the cache, one batch per continuation length (no
       padding), each row reading its item's context (the cache rows repeated by item),
    3. takes the log-softmax only where a continuation token is predicted.

Generation (``generate_until``) runs the prefix its batch's prompts share (a chat template's system turn) once
(``_model_generate``, ``lfm.generate.with_shared_prefix``).

Everything else (a context with one continuation, continuations longer than their context such as
loglikelihood_rolling windows, sequences longer than the
model's window, a seq2seq model) goes to stock HFLM unchanged. Results are (sum of the continuation's token
log-probabilities, whether each token is the greedy one), in request order, as HFLM returns them; they equal
HFLM's to float rounding (tests/test_realpair.py compares every item on the real pair's smoke build).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


def shared_context_hflm():
    """The ``SharedContextHFLM`` class (built on first use: lm-eval is an optional dependency of lfm)."""
    global _CLASS
    if _CLASS is None:
        from lm_eval.models.huggingface import HFLM

        _CLASS = type("SharedContextHFLM", (_SharedContext, HFLM), {"__doc__": _SharedContext.__doc__})
    return _CLASS


_CLASS = None


class _SharedContext:
    """HFLM whose requests sharing a context run that context once (module docstring)."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            groups.setdefault(tuple(context), []).append(i)
        shared = [idx for ctx, idx in groups.items() if len(idx) > 1 and self._fits(ctx, [requests[i][2] for i in idx])]
        mine = {i for idx in shared for i in idx}
        res: list = [None] * len(requests)
        rest = [i for i in range(len(requests)) if i not in mine]
        if rest:
            stock = super()._loglikelihood_tokens([requests[i] for i in rest], disable_tqdm, override_bs)
            for i, r in zip(rest, stock):
                res[i] = r
        shared.sort(key=lambda idx: -len(requests[idx[0]][1]))  # similar context lengths batch together
        per_batch = max(1, int(self.batch_size) if str(self.batch_size).isdigit() else 8)
        for s in range(0, len(shared), per_batch):
            chunk = shared[s:s + per_batch]
            answers = self._score_shared([requests[idx[0]][1] for idx in chunk],
                                         [[requests[i][2] for i in idx] for idx in chunk])
            for idx, item_answers in zip(chunk, answers):
                for i, answer in zip(idx, item_answers):
                    res[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return res

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        """HFLM's generation, with the prefix its batch's prompts share run once (``lfm.generate.with_shared_prefix``:
        the rows' shared prefix first, their padding after it, a cache of it repeated per row)."""
        from lfm.generate import with_shared_prefix

        if self.backend != "causal" or generation_kwargs.get("attention_mask") is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        with torch.inference_mode():
            enc = with_shared_prefix(self.model, {"input_ids": context,
                                                  "attention_mask": generation_kwargs["attention_mask"]})
        extra = {"cache": enc["cache"]} if "cache" in enc else {}
        return super()._model_generate(enc["input_ids"], max_length, stop,
                                       **{**generation_kwargs, "attention_mask": enc["attention_mask"], **extra})

    def _fits(self, context: tuple[int, ...], continuations: list[list[int]]) -> bool:
        """Shared when it pays: the context is most of each sequence (a multiple-choice question, not the first
        token of a rolling perplexity window, whose long continuation stock HFLM runs under a plain causal mask)."""
        longest = max(len(c) for c in continuations)
        return (self.backend == "causal" and len(context) >= longest > 0 and all(len(c) > 0 for c in continuations)
                and len(context) + longest <= self.max_length + 1)

    @torch.inference_mode()
    def _score_shared(self, contexts: list[list[int]], continuations: list[list[list[int]]]) -> list[list[tuple]]:
        """[(loglikelihood, is_greedy) per continuation] per context, for one batch of contexts."""
        model, dev = self.model, self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        B, Lc = len(contexts), max(len(c) for c in contexts)
        ids = torch.full((B, Lc), pad, dtype=torch.long)
        mask = torch.zeros((B, Lc), dtype=torch.long)
        for b, c in enumerate(contexts):  # left-padded: every context ends at the last column
            ids[b, Lc - len(c):], mask[b, Lc - len(c):] = torch.tensor(c), 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = F.log_softmax(out.logits[:, -1], dim=-1, dtype=self.softmax_dtype)  # [B, V]
        context_cache = out.past_key_values

        rows = [(b, cont) for b, conts in enumerate(continuations) for cont in conts]
        rest: dict[int, torch.Tensor] = {}  # row -> [len(cont) - 1, V] logits: position t predicts token t + 1
        by_length: dict[int, list[int]] = {}
        for r, (_, cont) in enumerate(rows):
            if len(cont) > 1:  # a continuation's last token is predicted, never fed
                by_length.setdefault(len(cont) - 1, []).append(r)
        for Lk, bucket in sorted(by_length.items()):  # one pass per length: no padding
            item = torch.tensor([rows[r][0] for r in bucket], device=dev)
            cache = copy.deepcopy(context_cache)
            cache.batch_select_indices(item)  # each row reads its own item's context
            cont_ids = torch.tensor([rows[r][1][:-1] for r in bucket], device=dev)
            pos = mask.sum(-1)[item][:, None] + torch.arange(Lk, device=dev)[None]
            step = model(input_ids=cont_ids, attention_mask=torch.cat([mask[item], torch.ones_like(cont_ids)], dim=1),
                         position_ids=pos, cache=cache, use_cache=True)
            rest.update(zip(bucket, step.logits))
        answers: list[list[tuple]] = [[] for _ in contexts]
        for r, (b, cont) in enumerate(rows):
            dists = first[b][None] if len(cont) == 1 else torch.cat(
                [first[b][None], F.log_softmax(rest[r], dim=-1, dtype=self.softmax_dtype)])
            target = torch.tensor(cont, device=dev)
            logprob = dists.gather(1, target[:, None]).squeeze(1)
            answers[b].append((float(logprob.sum()), bool((dists.argmax(-1) == target).all())))
        return answers
