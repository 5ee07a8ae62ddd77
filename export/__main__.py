"""``python -m export CHECKPOINT OUT_DIR [--precision fp32 fp16 int8 bf16] [--trt]``

Writes a model directory (docs/model_dir.md). Exit status: 0 written; 1 export failed (nothing
written); 2 bad arguments or --trt without CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export", description="Export a Stem-JEPA checkpoint to a model directory.")
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    ap.add_argument("--precision", nargs="+", default=["fp32", "fp16", "int8"], choices=["fp32", "fp16", "int8", "bf16"],
                    help="precisions to export (fp32 always; default: fp32 fp16 int8; bf16 is skipped and "
                         "recorded when ONNX Runtime's CPU provider cannot run it)")
    ap.add_argument("--trt", action="store_true", help="also build TensorRT FP16 engines (needs CUDA)")
    ap.add_argument("--no-text", action="store_true", help="do not export the text encoder")
    ap.add_argument("--text-from", help="copy text_encoder.onnx + tokenizer.json from this directory")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    ap.add_argument("--no-checkpoint-copy", action="store_true",
                    help="do not write model.pt (only the torch-tensorrt route of --trt needs it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads during export (default 1)")
    a = ap.parse_args(argv)

    if a.trt:  # refuse before doing any work
        from .trt import cuda_status

        ok, why = cuda_status()
        if not ok:
            print(f"export: --trt needs a CUDA GPU with TensorRT: {why}", file=sys.stderr)
            return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, a.threads))
    from .core import ExportError, export_model

    try:
        export_model(a.checkpoint, a.out_dir, a.precision, text=not a.no_text, text_from=a.text_from,
                     overwrite=a.overwrite, checkpoint_copy=not a.no_checkpoint_copy)
    except ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    if a.trt:
        from .trt import TrtUnavailable, build_trt

        try:
            build_trt(a.out_dir)
        except TrtUnavailable as e:
            print(f"export: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
