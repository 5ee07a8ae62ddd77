"""TensorRT engines for a model directory (GPU machines only; the ``gpu`` extra).

Two documented routes:

* ONNX Runtime's TensorRT execution provider (``onnxruntime-gpu``): creating a session with
  ``trt_fp16_enable`` and ``trt_engine_cache_enable`` / ``trt_engine_cache_path`` builds the engines
  and caches them in ``MODEL_DIR/trt``; later sessions (``engine.backends`` kind ``trt-fp16``)
  load them from there. Optimisation profiles cover batch 1..8 and T up to 800 frames.
* torch-tensorrt (optional): ``torch_tensorrt.compile(module, ir="dynamo", inputs=[...],
  enabled_precisions={torch.float16})`` on the encoder, saved with ``torch_tensorrt.save`` as
  ``trt/encoder.ts.ep`` when torch-tensorrt is importable.

A causal model's streaming graphs (engine/stream.py) get engines too, with profiles for one new
column per hop up to a whole window (:func:`_stream_profile`).

Without CUDA, :func:`require_cuda` raises :class:`TrtUnavailable` with the reason.
"""
from __future__ import annotations

import json
from pathlib import Path


class TrtUnavailable(RuntimeError):
    pass


def cuda_status() -> tuple[bool, str]:
    """(TensorRT EP usable, reason when not)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    prov = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in prov or "CUDAExecutionProvider" not in prov:
        return False, (f"ONNX Runtime {ort.__version__} offers {prov}: no CUDA/TensorRT execution provider "
                       f"(install the 'gpu' extra -- onnxruntime-gpu, torch-tensorrt -- on a CUDA machine)")
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
    except ImportError:
        pass
    return True, ""


def require_cuda() -> None:
    ok, why = cuda_status()
    if not ok:
        raise TrtUnavailable(f"--trt needs a CUDA GPU with TensorRT: {why}")


def trt_provider_options(model_dir: str | Path, max_frames: int = 800, n_mels: int = 80, d: int | None = None) -> dict:
    cache = Path(model_dir) / "trt"
    return {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": 2 << 30,
    }


def _profile(name: str, cfg: dict) -> dict:
    f, t, d, p = cfg["n_mels"], cfg["max_frames"], cfg["d_model"], cfg["n_mels"] // cfg["patch"] * cfg["max_frames"] // cfg["patch"]
    pmin = cfg["n_mels"] // cfg["patch"]
    if name in ("encoder", "target_encoder"):
        return {"trt_profile_min_shapes": f"logmel:1x{f}x{cfg['patch']}",
                "trt_profile_opt_shapes": f"logmel:1x{f}x{t}", "trt_profile_max_shapes": f"logmel:8x{f}x{t}"}
    if name == "predictor":
        c = "cond:1x{0}".format(cfg["text_dim"]) if cfg["conditioning"] == "film" else "cond:1"
        co = "cond:4x{0}".format(cfg["text_dim"]) if cfg["conditioning"] == "film" else "cond:4"
        cm = "cond:32x{0}".format(cfg["text_dim"]) if cfg["conditioning"] == "film" else "cond:32"
        return {"trt_profile_min_shapes": f"tokens:1x{pmin}x{d},{c}", "trt_profile_opt_shapes": f"tokens:1x{p}x{d},{co}",
                "trt_profile_max_shapes": f"tokens:1x{p}x{d},{cm}"}
    return {"trt_profile_min_shapes": f"tokens:1x{pmin}x{d}", "trt_profile_opt_shapes": f"tokens:1x{p}x{d}",
            "trt_profile_max_shapes": f"tokens:8x{p}x{d}"}


def _stream_profile(name: str, cfg: dict) -> dict:
    """TensorRT optimisation profiles of the streaming graphs (engine/stream.py): one new column
    per hop (opt) up to a whole window (max, a stream's catch-up); the ring is always 250 tokens."""
    f, d, rows = cfg["n_mels"], cfg["d_model"], cfg["n_mels"] // cfg["patch"]
    cols = cfg["max_frames"] // cfg["patch"]
    s, L, h = cols * rows, cfg["depth"], cfg["heads"]
    dh = d // h
    if name in ("encoder_step", "target_encoder_step"):
        def shapes(b, c):
            caches = ",".join(f"{kv}_cache_{i}:{b}x{h}x{s}x{dh}" for kv in "kv" for i in range(L))
            return f"logmel:{b}x{f}x{c * cfg['patch']},past_age:{s},{caches}"
        return {"trt_profile_min_shapes": shapes(1, 1), "trt_profile_opt_shapes": shapes(1, 1),
                "trt_profile_max_shapes": shapes(8, cols)}
    film = cfg["conditioning"] == "film"
    k = (cfg["predictor_layers"] - 1) * 2 * cfg["predictor_hidden"] if film else d
    if name == "predictor_code":
        c = (lambda n: f"cond:{n}x{cfg['text_dim']}") if film else (lambda n: f"cond:{n}")
        return {"trt_profile_min_shapes": c(1), "trt_profile_opt_shapes": c(4), "trt_profile_max_shapes": c(32)}
    if name == "predictor_tokens":
        return {"trt_profile_min_shapes": f"tokens:1x{rows}x{d},code:1x{k}",
                "trt_profile_opt_shapes": f"tokens:1x{rows}x{d},code:4x{k}",
                "trt_profile_max_shapes": f"tokens:1x{s}x{d},code:32x{k}"}
    raise KeyError(name)


def _feeds_from_profile(profile: str, int_inputs=("cond",), cond_int: bool = False) -> dict:
    """Random inputs of the shapes of one profile string (``name:AxBxC,...``)."""
    import numpy as np

    feeds = {}
    for part in profile.split(","):
        name, dims = part.split(":")
        shape = tuple(int(x) for x in dims.split("x"))
        if name in int_inputs and cond_int:
            feeds[name] = np.arange(shape[0], dtype=np.int64) % 4
        elif name == "past_age":
            feeds[name] = np.repeat(np.arange(1, shape[0] // 5 + 1, dtype=np.float32), 5)[:shape[0]]
        else:
            feeds[name] = np.random.randn(*shape).astype(np.float32)
    return feeds


def build_trt(model_dir: str | Path, log=print) -> dict:
    """Build (and cache) TensorRT FP16 engines for every fp32 graph of ``model_dir``; record them in
    the manifest under ``"trt"``. Requires CUDA (raises :class:`TrtUnavailable`)."""
    require_cuda()
    import numpy as np
    import onnxruntime as ort

    from engine.manifest import MANIFEST, MODEL_GRAPHS, load_manifest

    m = load_manifest(model_dir)
    (Path(model_dir) / "trt").mkdir(exist_ok=True)
    cfg = m.config
    built = {}
    for name in MODEL_GRAPHS:
        opts = {**trt_provider_options(model_dir), **_profile(name, cfg)}
        sess = ort.InferenceSession(str(m.graph_path(name)), providers=[("TensorrtExecutionProvider", opts),
                                                                         "CUDAExecutionProvider"])
        # one run builds the engine into the cache
        feeds = {}
        for i in sess.get_inputs():
            if i.name == "logmel":
                feeds[i.name] = np.random.randn(1, cfg["n_mels"], cfg["max_frames"]).astype(np.float32)
            elif i.name == "tokens":
                p = cfg["n_mels"] // cfg["patch"] * cfg["max_frames"] // cfg["patch"]
                feeds[i.name] = np.random.randn(1, p, cfg["d_model"]).astype(np.float32)
            elif i.name == "cond":
                feeds[i.name] = (np.random.randn(4, cfg["text_dim"]).astype(np.float32) if cfg["conditioning"] == "film"
                                 else np.arange(4, dtype=np.int64) % 4)
        sess.run(None, feeds)
        built[name] = {"provider": "TensorrtExecutionProvider", "fp16": True, **_profile(name, cfg)}
        log(f"export: TensorRT engine for {name} built (cache {Path(model_dir) / 'trt'})")
    stream = m.data.get("stream")
    if stream and cfg.get("causal"):  # the streaming graphs, same provider options, their own profiles
        for name, per in stream.get("graphs", {}).items():
            prof = _stream_profile(name, cfg)
            opts = {**trt_provider_options(model_dir), **prof}
            sess = ort.InferenceSession(str(Path(model_dir) / per["fp32"]["path"]),
                                        providers=[("TensorrtExecutionProvider", opts), "CUDAExecutionProvider"])
            sess.run(None, _feeds_from_profile(prof["trt_profile_opt_shapes"], cond_int=cfg["conditioning"] != "film"))
            built[name] = {"provider": "TensorrtExecutionProvider", "fp16": True, **prof}
            log(f"export: TensorRT engine for {name} built (cache {Path(model_dir) / 'trt'})")
    try:  # optional second route
        import torch
        import torch_tensorrt  # type: ignore

        from .torch_backend import TorchModel

        if "model_pt" not in json.loads((Path(model_dir) / MANIFEST).read_text()).get("files", {}):
            raise ImportError("no model.pt in the model directory (exported with --no-checkpoint-copy)")
        tm = TorchModel(model_dir, device="cuda")
        enc = tm.graphs["encoder"].half().eval()
        inp = torch_tensorrt.Input(min_shape=(1, cfg["n_mels"], cfg["patch"]), opt_shape=(1, cfg["n_mels"], cfg["max_frames"]),
                                   max_shape=(8, cfg["n_mels"], cfg["max_frames"]), dtype=torch.float16)
        trt_mod = torch_tensorrt.compile(enc, ir="dynamo", inputs=[inp], enabled_precisions={torch.float16})
        ex = torch.randn(1, cfg["n_mels"], cfg["max_frames"], dtype=torch.float16, device="cuda")
        torch_tensorrt.save(trt_mod, str(Path(model_dir) / "trt" / "encoder.ts.ep"), inputs=[ex])
        built["torch_tensorrt_encoder"] = {"path": "trt/encoder.ts.ep", "fp16": True}
    except ImportError as e:
        log(f"export: torch-tensorrt route skipped ({e}); only the ONNX Runtime TensorRT cache was built")
    data = json.loads((Path(model_dir) / MANIFEST).read_text())
    data["trt"] = {"engines": built, "cache": "trt"}
    (Path(model_dir) / MANIFEST).write_text(json.dumps(data, indent=1))
    return built
