"""``python -m export CHECKPOINT OUT_DIR [--precision fp32 fp16 int8 bf16] [--trt]``

Writes a model directory (docs/model_dir.md). Exit status: 0 written; 2 on any error (bad
arguments, --trt without CUDA, a failed export: nothing is written then).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.cli import CliError, Parser, guarded


@guarded("python -m export")
def main(argv=None) -> int:
    ap = Parser(prog="python -m export", description=__doc__)
    ap.add_argument("checkpoint", help="training checkpoint (.pt), e.g. runs/beats/final.pt")
    ap.add_argument("out_dir", help="model directory to write")
    ap.add_argument("--precision", nargs="+", default=["fp32", "fp16", "int8"], choices=["fp32", "fp16", "int8", "bf16"],
                    help="precisions to export (fp32 always; default: fp32 fp16 int8; bf16 is skipped and "
                         "recorded when ONNX Runtime's CPU provider cannot run it)")
    ap.add_argument("--trt", action="store_true", help="also build TensorRT FP16 engines (needs CUDA)")
    ap.add_argument("--no-text", action="store_true", help="do not export the text encoder")
    ap.add_argument("--text-from", metavar="DIR",
                    help="copy text_encoder.onnx + tokenizer.json from this model directory (default: export the "
                    "text encoder anew, which needs the 'text' extra)")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    ap.add_argument("--no-checkpoint-copy", action="store_true",
                    help="do not write model.pt (only the torch-tensorrt route of --trt needs it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads during export (default 1)")
    ap.add_argument("--keytempo-weight", type=float, default=None, metavar="A",
                    help="the fused ranking's key/tempo weight in [0, 1], written into the manifest (default: the "
                    "checkpoint's, else the engine default; choose it with python -m training.fusion)")
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error("--threads must be >= 1")

    if a.trt:  # refuse before doing any work
        from .trt import cuda_status

        ok, why = cuda_status()
        if not ok:
            raise CliError(f"--trt needs a CUDA GPU with TensorRT: {why}",
                           "leave out --trt here, or install the 'gpu' extra on a CUDA machine")
    if not Path(a.checkpoint).is_file():
        raise CliError(f"{a.checkpoint}: no such checkpoint",
                       "give a training checkpoint (.pt); python -m export.recover rebuilds one from a model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, a.threads))
    from .core import ExportError, export_model

    try:
        export_model(a.checkpoint, a.out_dir, a.precision, text=not a.no_text, text_from=a.text_from,
                     overwrite=a.overwrite, checkpoint_copy=not a.no_checkpoint_copy,
                     keytempo_weight=a.keytempo_weight)
    except ExportError as e:
        raise CliError(f"export failed (nothing written): {e}") from e
    if a.trt:
        from .trt import build_trt

        build_trt(a.out_dir)  # TrtUnavailable: one line, exit 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
