"""The ``bench`` command: parse, call the API, map errors to one line and an exit code."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import yaml

from bench import console
from bench.errors import BenchError, SpecError


def parse_sets(items: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """``["depth=6", "attention=re"]`` → ``{"depth": 6, "attention": "re"}`` (YAML values)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(item, item, "expected key=value", where=flag)
        try:
            values[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise SpecError(key, text, "is not a valid YAML value", where=flag) from None
    return values


def cmd_models(args: argparse.Namespace) -> int:
    from bench.models import VARIANTS
    from bench.profiling import closed_form

    rows = []
    for name, v in VARIANTS.items():
        cf = closed_form(v)
        rows.append({"model": name, "img_size": v.img_size, "depth": v.depth,
                     "embed_dim": v.embed_dim, "num_heads": v.num_heads, "mlp_ratio": v.mlp_ratio,
                     "attention": v.attention, "re_blocks": v.n_re_blocks,
                     "param_count": cf["params"] / 1e6, "infer_gmacs": cf["macs"] / 1e9})
    if args.json:
        console.print_json(rows)
    else:
        console.rows_table(rows, list(rows[0]), title="bench variants (any timm model name works too)",
                           headers={"img_size": "img", "embed_dim": "dim", "num_heads": "heads",
                                    "mlp_ratio": "mlp", "re_blocks": "re", "param_count": "M params",
                                    "infer_gmacs": "GMACs"})
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bench.profiling import profile

    overrides = parse_sets(args.set)
    with console.status(f"profiling {args.name}", quiet=args.json) as update:
        try:
            record = profile(args.name, overrides, device=args.device, dtype=args.dtype,
                             batch_size=args.batch_size, warmup=args.warmup, iters=args.iters,
                             speed=not args.no_speed, on_progress=update)
        except SpecError as e:
            raise e.within("--set") from None
    if args.json:
        console.print_json(record)
    else:
        console.record_table(record, title=f"{args.name} on {record['device_name']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bench import __version__

    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark ViT/DeepViT variants: is this architecture change worth its cost?")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list bench's registered variants",
                       description="List bench's registered variants with closed-form params and GMACs.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="measure the cost of one model",
                       description="Parameters, MACs (fvcore, attention included), activations, "
                                   "inference and train-step speed, and peak CUDA memory of one model.")
    p.add_argument("name", metavar="NAME", help="a bench variant (`bench models`) or any timm model name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a variant field, e.g. --set depth=6 --set attention=re (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    p.add_argument("--batch-size", type=int, default=32, help="halved on out-of-memory (default 32)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 2 CPU, 10 CUDA)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default: 5 CPU, 50 CUDA)")
    p.add_argument("--no-speed", action="store_true", help="count only: skip timing")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        console.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except Exception as e:  # out of memory outside the retry loop, or a bug
        if os.environ.get("BENCH_DEBUG"):
            raise
        from bench.profiling import is_oom
        if is_oom(e):
            console.error(f"out of memory: {str(e).splitlines()[0]}")
        else:
            console.error(f"internal error: {type(e).__name__}: {e} (set BENCH_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
