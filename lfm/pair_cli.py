"""`lfm pair BASE TUNED`: which row of the family table a pair matched, and what lfm will do with each tensor.

Reads configs and safetensors headers only (``lfm.open_pair``), so it answers in a second for any size:

    $ lfm pair Qwen/Qwen2-7B-Instruct Qwen/Qwen2-VL-7B-Instruct
    family   Qwen2-VL (Qwen2VLForConditionalGeneration), row in lfm/families.py, table in docs/families.md
    layout   save_pretrained: LM at lm_head., model. (qwen2_vl_text LM <-> qwen2 base)
    merged   339 language-model tensors
    copied   390 tensors from tuned: vision tower + merger 390
    ...
"""

import argparse


def pair_report(pair) -> str:
    """The lines `lfm pair` prints for an opened pair."""
    from lfm.pair import text_config, type_name

    family, lines = pair.family, []
    lines.append(f"base     {pair.base.path} ({type_name(pair.base.config)}, {pair.base.config.get('model_type')})")
    lines.append(f"tuned    {pair.tuned.path} ({type_name(pair.tuned.config)})")
    if family is None:
        lines.append("family   none: the tuned model is a causal LM of the base's type (LLM-to-LLM, keys by identity)")
    else:
        lm_type = text_config(pair.tuned.config).get("model_type")
        lines.append(f"family   {family.name} ({', '.join(family.classes)}), row in lfm/families.py, table in "
                     f"docs/families.md")
        lines.append(f"layout   {pair.layout.name}: LM at {', '.join(pair.lm_prefixes())} ({lm_type} LM <-> "
                     f"{pair.base.config.get('model_type')} base)")
    lines.append(f"merged   {len(pair.entries)} language-model tensors")
    parts = ", ".join(f"{part} {n}" for part, n in pair.parts().items())
    lines.append(f"copied   {len(pair.passthrough)} tensors from tuned" + (f": {parts}" if parts else ""))
    for name, rows in pair.extra_vocab.items():
        lines.append(f"vocab    {name}: {rows} extra rows in tuned, kept from tuned (shared rows merged)")
    if family is not None:
        lines.append(f"match    {', '.join(family.match)} (equal where both configs state them)")
        for name, (b, t) in pair.differences.items():
            lines.append(f"differs  {name}: base {b}, tuned {t} (the merged model keeps tuned's)")
        lines.append(f"tied     {'yes' if pair.tuned.config.get('tie_word_embeddings', family.tied) else 'no'} "
                     f"(tie_word_embeddings; default {str(family.tied).lower()} for {family.name})")
        lines.append(f"notes    {family.notes}")
    return "\n".join(lines)


def cmd_pair(args) -> int:
    from lfm.pair import open_pair

    print(pair_report(open_pair(args.base, args.tuned, allow_pickle=args.allow_pickle)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("pair", help="which MLLM family a (base, tuned) pair is, and what is merged or copied",
                       description="Open a pair from its configs and headers (no tensor is read) and print the row "
                                   "of lfm's family table it matched, the LM prefix, and the passthrough counts.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="base LLM directory or hub id")
    p.add_argument("tuned", help="tuned MLLM (or LLM) directory or hub id")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle .bin weights (loaded with torch.load(weights_only=True))")
    p.set_defaults(func=cmd_pair)
