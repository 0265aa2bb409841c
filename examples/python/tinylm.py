"""A tiny byte-level transformer language model, its data and its train/eval loops.

Self-contained (PyTorch only) and deterministic given a seed, so the fine-tuning demo and any
later benchmark can share it:

    from tinylm import TinyLMConfig, TinyLM, ByteCorpus, pretrain_corpus, finetune_corpus
    cfg = TinyLMConfig()
    model = TinyLM(cfg)
    corpus = ByteCorpus.from_source(finetune_corpus(), val_fraction=0.1)
    batches = corpus.train_batches(steps=100, batch_size=32, context=cfg.context, seed=0)
    losses = train(model, optimizer, batches, device="cpu")
    val = evaluate(model, corpus.val_batches(32, cfg.context), device="cpu")

Text sources are only files already on the machine (Debian's /usr/share/common-licenses and
Python's own standard library); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import inspect
import math
import os
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB_SIZE = 256  # bytes


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyLMConfig:
    n_layer: int = 3
    d_model: int = 128
    n_head: int = 4
    context: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    tie_embeddings: bool = True

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.mlp_ratio * d)
        self.fc2 = nn.Linear(cfg.mlp_ratio * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        x = x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))
        return x


class TinyLM(nn.Module):
    """GPT-style decoder: byte embeddings + learned positions, pre-LN blocks, (tied) byte head."""

    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(VOCAB_SIZE, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB_SIZE, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2 style scaled init of the residual projections
            for lin in (blk.proj, blk.fc2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(pos))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, VOCAB_SIZE), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, prompt: bytes, n: int, temperature: float = 0.8, seed: int = 0) -> bytes:
        g = torch.Generator().manual_seed(seed)
        dev = next(self.parameters()).device
        idx = torch.tensor(list(prompt) or [10], dtype=torch.long, device=dev)[None]
        was = self.training
        self.eval()
        for _ in range(n):
            logits = self(idx[:, -self.cfg.context :])[0, -1].float().cpu()
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=g).to(dev)
            idx = torch.cat([idx, nxt[None]], dim=1)
        self.train(was)
        return bytes(idx[0, len(prompt) :].tolist())


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Text:
    name: str  # human-readable description of what was used
    text: str
    val_text: Optional[str] = None  # a held-out part chosen by the source, if it has one

    @property
    def sha(self) -> str:
        h = hashlib.sha256(self.text.encode("utf-8"))
        h.update(b"\0" + (self.val_text or "").encode("utf-8"))
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.text) + len(self.val_text or "")


LICENSE_DIR = "/usr/share/common-licenses"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _python_license() -> Optional[str]:
    for base in (sysconfig.get_paths().get("stdlib", ""), sys.prefix, sys.base_prefix):
        t = _read(os.path.join(base, "LICENSE.txt")) if base else None
        if t:
            return t
    return None


def pretrain_corpus(min_chars: int = 30_000) -> Text:
    """Legal English: the GNU licence texts (GPL-3, then GPL-2 / LGPL-2.1 / GFDL-1.3 if present).

    Falls back to Python's own LICENSE.txt, then to the stdlib's reStructuredText/plain-text
    files if the Debian licence directory is missing.
    """
    names = ["GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3"]
    parts, used = [], []
    for n in names:
        t = _read(os.path.join(LICENSE_DIR, n))
        if t:
            parts.append(t)
            used.append(n)
    if sum(map(len, parts)) >= min_chars:
        return Text(f"GNU licence texts ({', '.join(used)}) from {LICENSE_DIR}", "\n\n".join(parts))
    t = _python_license()
    if t:
        parts.append(t)
        used.append("Python LICENSE.txt")
    if sum(map(len, parts)) >= min_chars:
        return Text("licence texts: " + ", ".join(used), "\n\n".join(parts))
    raise RuntimeError(
        f"no pre-training text found: {LICENSE_DIR} is missing and Python's LICENSE.txt "
        "is too short or absent"
    )


# Modules whose docstrings make up the fine-tuning corpus: technical prose about Python APIs,
# full of identifiers, code examples and reST markup -- a clearly different distribution from
# licence legalese. A fixed list in a fixed order keeps the corpus reproducible.
DOC_MODULES = (
    "builtins", "collections", "itertools", "functools", "operator", "string", "re", "textwrap",
    "json", "json.decoder", "json.encoder", "csv", "argparse", "pathlib", "os", "os.path",
    "shutil", "glob", "fnmatch", "tempfile", "io", "struct", "codecs", "datetime", "calendar",
    "time", "math", "cmath", "statistics", "random", "fractions", "decimal", "heapq", "bisect",
    "array", "copy", "pprint", "reprlib", "enum", "dataclasses", "typing", "abc", "contextlib",
    "inspect", "types", "weakref", "logging", "warnings", "unittest", "doctest", "subprocess",
    "threading", "queue", "sched", "socket", "selectors", "email.message", "http.client",
    "urllib.parse", "base64", "binascii", "hashlib", "hmac", "zlib", "gzip", "tarfile",
    "zipfile", "sqlite3", "pickle", "shelve", "configparser", "difflib", "unicodedata",
    "locale", "gettext", "traceback", "ast", "dis", "tokenize", "keyword", "platform", "uuid",
    "secrets", "ipaddress", "mimetypes", "html", "html.parser", "xml.etree.ElementTree",
    "asyncio", "concurrent.futures", "multiprocessing",
)


def _docstrings(max_chars: int, per_module: int) -> Tuple[List[str], int]:
    """Docstrings of DOC_MODULES and their public classes/functions/methods, deduplicated.

    Returns a list of documents ("<qualified name>\n<docstring>\n"), at most `per_module`
    characters from each module so that the corpus spans many modules, and the module count.
    """
    docs: List[str] = []
    seen = set()
    total, nmods = 0, 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in DOC_MODULES:
            if total >= max_chars:
                break
            try:
                mod = importlib.import_module(modname)
            except Exception:
                continue
            nmods += 1
            cands = [(modname, mod)]
            for name in sorted(vars(mod)):
                obj = getattr(mod, name, None)
                if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                    continue
                if modname != "builtins" and getattr(obj, "__module__", modname) != modname:
                    continue
                cands.append((f"{modname}.{name}", obj))
                if inspect.isclass(obj):
                    for mname in sorted(vars(obj)):
                        if not mname.startswith("_"):
                            meth = vars(obj)[mname]
                            if inspect.isroutine(meth) or isinstance(meth, (classmethod, staticmethod)):
                                cands.append((f"{modname}.{name}.{mname}", getattr(obj, mname, None)))
            used = 0
            for header, obj in cands:
                try:
                    doc = inspect.getdoc(obj)
                except Exception:
                    doc = None
                if not doc or len(doc) < 40 or doc in seen:
                    continue
                seen.add(doc)
                piece = f"{header}\n{doc.strip()}\n"
                docs.append(piece)
                used += len(piece)
                total += len(piece)
                if used >= per_module or total >= max_chars:
                    break
    return docs, nmods


def _stdlib_sources(max_chars: int) -> str:
    stdlib = sysconfig.get_paths().get("stdlib", "")
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    parts, total = [], 0
    for f in files:
        t = _read(f)
        if t:
            parts.append(t)
            total += len(t)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def finetune_corpus(max_chars: int = 160_000, min_chars: int = 30_000, val_every: int = 10) -> Text:
    """Python standard-library docstrings (gathered with `inspect`), about max_chars characters.

    Every `val_every`-th docstring goes to the held-out `val_text`, so validation covers the
    same modules as training. Falls back to the stdlib's .py sources if docstrings are
    unavailable (e.g. python -OO), then to the Apache-2.0 + MPL-2.0 licence texts (for both,
    ByteCorpus holds out the tail).
    """
    docs, nmods = _docstrings(max_chars, per_module=max(2_000, max_chars // 40))
    if sum(map(len, docs)) >= min_chars:
        train = "\n".join(d for i, d in enumerate(docs) if i % val_every != val_every - 1)
        val = "\n".join(d for i, d in enumerate(docs) if i % val_every == val_every - 1)
        return Text(
            f"docstrings of {nmods} Python {sys.version.split()[0]} stdlib modules (via inspect)",
            train,
            val,
        )
    text = _stdlib_sources(max_chars)
    if len(text) >= min_chars:
        return Text("Python stdlib .py sources", text)
    parts = [t for t in (_read(os.path.join(LICENSE_DIR, n)) for n in ("Apache-2.0", "MPL-2.0")) if t]
    text = "\n\n".join(parts)
    if len(text) >= min_chars:
        return Text("Apache-2.0 + MPL-2.0 licence texts", text)
    raise RuntimeError("no fine-tuning text found (stdlib docstrings/sources and licences missing)")


class ByteCorpus:
    """Bytes of a text split into a training part and a held-out validation part (the tail)."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor):
        self.train = train
        self.val = val

    @classmethod
    def from_source(cls, src: Text, val_fraction: float = 0.1) -> "ByteCorpus":
        """Use the source's own held-out part if it has one, else hold out the tail."""
        if src.val_text:
            return cls(_bytes(src.text), _bytes(src.val_text))
        return cls.from_text(src.text, val_fraction)

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> "ByteCorpus":
        data = _bytes(text)
        n_val = int(len(data) * val_fraction)
        if val_fraction > 0:
            return cls(data[: len(data) - n_val].clone(), data[len(data) - n_val :].clone())
        return cls(data.clone(), data[:0].clone())

    def train_batches(
        self, steps: int, batch_size: int, context: int, seed: int
    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """`steps` random windows batches; a deterministic function of `seed` only."""
        g = torch.Generator().manual_seed(seed)
        hi = len(self.train) - context - 1
        for _ in range(steps):
            ix = torch.randint(0, hi, (batch_size,), generator=g)
            yield _windows(self.train, ix, context)

    def val_batches(
        self, batch_size: int, context: int, max_batches: Optional[int] = None
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Fixed, non-overlapping windows covering the validation split (same every call)."""
        starts = torch.arange(0, len(self.val) - context - 1, context)
        batches = [
            _windows(self.val, starts[i : i + batch_size], context)
            for i in range(0, len(starts), batch_size)
        ]
        return batches[:max_batches] if max_batches else batches


def _bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def _windows(data: torch.Tensor, ix: torch.Tensor, context: int):
    offs = torch.arange(context + 1)
    w = data[ix[:, None] + offs[None, :]]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]], device) -> float:
    """Mean cross-entropy (nats per byte) over `batches`, token-weighted."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        _, loss = model(x, y)
        tot += loss.item() * y.numel()
        n += y.numel()
    model.train(was)
    return tot / max(n, 1)


def lr_schedule(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the base lr: linear warmup, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


@dataclass
class TrainLog:
    steps: List[int] = dataclasses.field(default_factory=list)
    losses: List[float] = dataclasses.field(default_factory=list)
    val_steps: List[int] = dataclasses.field(default_factory=list)
    val_losses: List[float] = dataclasses.field(default_factory=list)
    step_seconds: List[float] = dataclasses.field(default_factory=list)  # fwd+bwd+opt step
    opt_seconds: List[float] = dataclasses.field(default_factory=list)  # optimizer.step() only


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    device,
    total_steps: int,
    warmup: int = 0,
    grad_clip: Optional[float] = 1.0,
    eval_every: int = 0,
    val_batches: Optional[Sequence] = None,
    progress: Optional[Callable[[int, float], None]] = None,
    log: Optional[TrainLog] = None,
) -> TrainLog:
    """Plain training loop; the lr of each param group is base_lr * lr_schedule(step)."""
    log = log or TrainLog()
    base = [g["lr"] for g in optimizer.param_groups]
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    model.train()
    if eval_every and val_batches is not None:
        log.val_steps.append(0)
        log.val_losses.append(evaluate(model, val_batches, device))
    for step, (x, y) in enumerate(batches):
        if step >= total_steps:
            break
        mult = lr_schedule(step, total_steps, warmup)
        for g, b in zip(optimizer.param_groups, base):
            g["lr"] = b * mult
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync()
        t0 = time.perf_counter()
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        sync()
        t1 = time.perf_counter()
        optimizer.step()
        sync()
        t2 = time.perf_counter()
        lv = loss.item()
        log.steps.append(step + 1)
        log.losses.append(lv)
        log.step_seconds.append(t2 - t0)
        log.opt_seconds.append(t2 - t1)
        if eval_every and val_batches is not None and ((step + 1) % eval_every == 0 or step + 1 == total_steps):
            log.val_steps.append(step + 1)
            log.val_losses.append(evaluate(model, val_batches, device))
        if progress:
            progress(step + 1, lv)
    for g, b in zip(optimizer.param_groups, base):
        g["lr"] = b
    return log


def adamw_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the moment tensors (exp_avg, exp_avg_sq) held by torch.optim.AdamW."""
    n = 0
    for st in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            t = st.get(key)
            if isinstance(t, torch.Tensor):
                n += t.numel() * t.element_size()
    return n


def config_hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
