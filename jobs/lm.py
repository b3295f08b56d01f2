"""The lm pipeline: prepare → train (FSDP) → evaluate → register.

A byte-level GPT-style causal language model trained on the Python standard library's own
source files, so it needs no download. ``prepare`` splits the ``.py`` files into train, val and
test by file and stores each split as a Parquet table of byte values; it also measures the
baseline every model must beat: the test split's perplexity under the train split's byte
frequencies (``unigram_perplexity``). ``train`` runs on every worker and shards the model with
FSDP (or DDP: the step's ``strategy``); its checkpoints hold the live model and optimizer, saved
sharded and restored at any world size. ``evaluate`` measures the test perplexity and writes a
sample of generated text; ``register`` registers the model if it beats the unigram baseline.
Run it with ``rto run configs/lm.yaml``; scale the model up with e.g.
``--set train.params.n_layer=12 --set train.params.d_model=768 --set train.params.n_head=12``.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field

from raytrain_orch import Artifact, Output, Params, Pipeline, StepContext

pipeline = Pipeline("lm", description="A byte-level GPT trained with FSDP on the Python standard library's source.")

VOCAB_SIZE = 256  # one token per byte value
COLUMN = "bytes"  # the one column of a split's table: its bytes in order, as uint8
SPLITS = ("train", "val", "test")
#: Directories of the standard library left out of the corpus: installed packages, test suites,
#: generated code (the codecs' character tables, pydoc's topic strings) and the GUI and legacy tools.
SKIPPED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "encodings",
        "pydoc_data",
        "idlelib",
        "lib2to3",
        "turtledemo",
    }
)


# --- the model -------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """The shape of a ``GPT``; saved with its checkpoints (as a plain dict) to rebuild it."""

    vocab_size: int = VOCAB_SIZE
    block_size: int = 128  # the longest context, in tokens
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    dropout: float = 0.0


class CausalSelfAttention(torch.nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.d_model % config.n_head:
            raise ValueError(f"d_model ({config.d_model}) must be a multiple of n_head ({config.n_head})")
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = torch.nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = torch.nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = torch.nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = (
            t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2)
            for t in self.qkv(x).split(channels, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(batch, time, channels)))


class MLP(torch.nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = torch.nn.Linear(config.d_model, 4 * config.d_model)
        self.proj = torch.nn.Linear(4 * config.d_model, config.d_model)
        self.dropout = torch.nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(torch.nn.Module):
    """A pre-LayerNorm transformer block: causal self-attention, then a GELU MLP, each residual."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = torch.nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(torch.nn.Module):
    """A GPT-2-style decoder: ``(batch, time)`` token ids → ``(batch, time, vocab)`` logits.

    The blocks are a ``ModuleList`` (FSDP shards each entry as one unit), and the lm head is its
    own weight, not tied to the token embedding (tied weights complicate sharded checkpoints).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = torch.nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = torch.nn.Embedding(config.block_size, config.d_model)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.blocks = torch.nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = torch.nn.LayerNorm(config.d_model)
        self.head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("proj.weight"):
                torch.nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: torch.nn.Module) -> None:
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        time = idx.shape[1]
        if time > self.config.block_size:
            raise ValueError(f"a sequence of {time} tokens is longer than the block size {self.config.block_size}")
        positions = torch.arange(time, device=idx.device)
        x = self.dropout(self.tok_emb(idx) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- data: the corpus, windows and batches ---------------------------------------------------


def corpus_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """The standard library's ``.py`` files as ``(relative posix path, path)``, sorted by relative
    path, without the ``SKIPPED_DIRS``. ``root`` defaults to this interpreter's standard library."""
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if not SKIPPED_DIRS.intersection(relative.parts[:-1]) and path.is_file():
            files.append((relative.as_posix(), path))
    return sorted(files)


def file_hash(relative: str, seed: int) -> float:
    """A file's place in [0, 1): the same for the same path and seed on any machine."""
    digest = hashlib.sha256(f"{seed}:{relative}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(relative: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Which split a file belongs to, by its hash: the splits never share a file."""
    u = file_hash(relative, seed)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def tokens_table(data: bytes) -> pa.Table:
    """A split's bytes as a table of one uint8 column, ``COLUMN``, in order."""
    return pa.table({COLUMN: pa.array(np.frombuffer(data, dtype=np.uint8), type=pa.uint8())})


def read_tokens(prepare: Artifact, split: str) -> torch.Tensor:
    """A split of ``prepare``'s output as one uint8 tensor of byte values."""
    return torch.from_numpy(prepare.read_table(split).column(COLUMN).to_numpy().astype(np.uint8, copy=True))


def unigram_perplexity(train: np.ndarray, test: np.ndarray) -> float:
    """The perplexity of ``test`` under ``train``'s byte frequencies, add-one smoothed over all 256
    byte values: ``exp`` of the cross-entropy in nats. The baseline a language model must beat."""
    counts = np.bincount(train, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    test_counts = np.bincount(test, minlength=VOCAB_SIZE)
    return math.exp(-float(test_counts @ log_p) / max(len(test), 1))


def random_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows of ``block_size`` tokens at random offsets of ``data``: the inputs and,
    one token on, the targets, both int64 ``(batch_size, block_size)``."""
    starts = torch.randint(0, len(data) - block_size, (batch_size, 1), generator=generator)
    windows = data[starts + torch.arange(block_size + 1)].long()
    return windows[:, :-1], windows[:, 1:]


def fixed_windows(data: torch.Tensor, block_size: int, count: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``block_size + 1`` tokens (inputs and, one on, targets) tiling
    ``data`` from its start, int64 ``(windows, block_size + 1)``: all of them, or ``count`` spread
    evenly across it. The same on every call and every rank."""
    total = (len(data) - 1) // block_size
    if total < 1:
        raise ValueError(f"{len(data)} tokens are too few for one window of {block_size}")
    chosen = torch.arange(total)
    if count is not None and count < total:
        chosen = torch.linspace(0, total - 1, count).round().long()
    return data[chosen[:, None] * block_size + torch.arange(block_size + 1)].long()


def lm_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy, in nats."""
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def mean_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """The mean next-token cross-entropy over ``windows`` (from ``fixed_windows``), in batches,
    with the model in eval mode (left so). Under FSDP every rank must call it with the same windows."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for chunk in windows.split(batch_size):
            chunk = chunk.to(device)
            total += lm_loss(model, chunk[:, :-1], chunk[:, 1:]).item() * len(chunk)
    return total / len(windows)


def mean_across_ranks(value: float, device: torch.device) -> float:
    """``value`` averaged over all ranks (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``min_ratio × peak`` at
    ``total_steps``. A function of the step alone, so a resumed run continues the same schedule."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's random windows in one epoch: distinct per rank and epoch."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


@torch.no_grad()
def generate(model: GPT, prompt: bytes, new_tokens: int, temperature: float = 0.8, seed: int = 0) -> bytes:
    """``prompt`` continued by ``new_tokens`` sampled bytes (greedy at ``temperature`` 0)."""
    model.eval()
    block_size = model.config.block_size
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([list(prompt)], dtype=torch.long)
    for _ in range(new_tokens):
        logits = model(idx[:, -block_size:])[0, -1]
        if temperature <= 0:
            token = logits.argmax().view(1)
        else:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, token.view(1, 1)], dim=1)
    return bytes(idx[0].tolist())


# --- prepare ---------------------------------------------------------------------------------


class PrepareParams(Params):
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the files held out for validation.")
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the files held out for the final test.")
    max_train_bytes: int = Field(4_000_000, ge=10_000, description="Bytes of the training split, at most.")
    max_val_bytes: int = Field(200_000, ge=10_000, description="Bytes of the validation split, at most.")
    max_test_bytes: int = Field(200_000, ge=10_000, description="Bytes of the test split, at most.")
    max_file_bytes: int = Field(
        32_768, ge=1_000, description="Bytes taken from the start of each file, at most: more files in each split."
    )
    seed: int = Field(0, description="Seed of the split by file (and of the order files are taken in).")


@pipeline.task(params=PrepareParams)
def prepare(ctx: StepContext, params: PrepareParams) -> Output:
    """Split the standard library's ``.py`` files by file into train, val and test; store each as
    a table of its bytes (the files' starts concatenated in hash order, cut at the split's cap)."""
    caps = {"train": params.max_train_bytes, "val": params.max_val_bytes, "test": params.max_test_bytes}
    files: dict[str, list[tuple[float, str, Path]]] = {name: [] for name in SPLITS}
    for relative, path in corpus_files():
        split = split_of(relative, params.seed, params.val_fraction, params.test_fraction)
        files[split].append((file_hash(relative, params.seed + 1), relative, path))

    data: dict[str, bytes] = {}
    metrics: dict[str, float] = {}
    for name in SPLITS:
        parts, size, used = [], 0, 0
        for _, _, path in sorted(files[name]):  # a seeded shuffle: caps take files from all over
            if size >= caps[name]:
                break
            parts.append(path.read_bytes()[: params.max_file_bytes])
            size, used = size + len(parts[-1]), used + 1
        data[name] = b"".join(parts)[: caps[name]]
        metrics[f"bytes_{name}"] = len(data[name])
        metrics[f"files_{name}"] = used

    train_bytes, test_bytes = (np.frombuffer(data[name], dtype=np.uint8) for name in ("train", "test"))
    metrics["unigram_perplexity"] = unigram_perplexity(train_bytes, test_bytes)
    return Output(tables={name: tokens_table(data[name]) for name in SPLITS}, metrics=metrics)


# --- train (runs on every worker) ------------------------------------------------------------


class TrainParams(Params):
    epochs: int = Field(8, ge=1, description="Epochs: a checkpoint and a validation after each.")
    steps_per_epoch: int = Field(90, ge=1, description="Optimizer steps per epoch, the same on every worker.")
    batch_size: int = Field(32, ge=1, description="Global batch size in windows, split across the workers.")
    block_size: int = Field(128, ge=8, description="Context length of the model, in bytes.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention heads per block (must divide d_model).")
    d_model: int = Field(128, ge=8, description="Width of the residual stream.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout rate.")
    lr: float = Field(4e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(20, ge=0, description="Steps of linear warmup before the cosine decay.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of the matrices (not biases or norms).")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: no clipping).")
    val_windows: int = Field(128, ge=1, description="Windows of the validation split scored after each epoch.")
    seed: int = Field(0, description="Seed of the weights and of the random windows.")

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            dropout=self.dropout,
        )


def make_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices and embeddings only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=params.lr, betas=(0.9, 0.95))


@pipeline.train(params=TrainParams)
def train(ctx, params: TrainParams, prepare: Artifact) -> None:
    """Train on random windows of the train split, every worker its own; after each epoch, score
    the same validation windows on every rank and checkpoint the live model and optimizer (sharded
    under FSDP) with the epoch and the model's config."""
    torch.manual_seed(params.seed)
    config = params.gpt_config()
    data = read_tokens(prepare, "train")
    val = fixed_windows(read_tokens(prepare, "val"), config.block_size, params.val_windows)
    batch_size = ctx.batch_size(params.batch_size)

    model = ctx.prepare_model(GPT(config))
    optimizer = make_optimizer(model, params)
    values = ctx.restore({"model": model, "optimizer": optimizer})  # resumed: weights and moments loaded
    start = values["epoch"] + 1 if values else 0

    total_steps = params.epochs * params.steps_per_epoch
    for epoch in range(start, params.epochs):
        generator = torch.Generator().manual_seed(batch_seed(params.seed, epoch, ctx.rank))
        model.train()
        total = 0.0
        for step in range(params.steps_per_epoch):
            lr = learning_rate(epoch * params.steps_per_epoch + step, total_steps, params.lr, params.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets = random_batch(data, batch_size, config.block_size, generator)
            loss = lm_loss(model, inputs.to(ctx.device), targets.to(ctx.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if params.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            optimizer.step()
            total += loss.item()

        train_loss = mean_across_ranks(total / params.steps_per_epoch, ctx.device)
        val_loss = mean_across_ranks(mean_loss(model, val, batch_size, ctx.device), ctx.device)
        ctx.report(
            {"epoch": epoch, "loss": train_loss, "val_loss": val_loss, "val_perplexity": math.exp(val_loss)},
            state={"model": model, "optimizer": optimizer, "epoch": epoch, "model_config": asdict(config)},
            samples=params.steps_per_epoch * batch_size * ctx.world_size,  # windows trained on, all workers
        )


def load_model(train: Artifact) -> GPT:
    """The trained model from ``train``'s consolidated checkpoint, in eval mode on the CPU."""
    state = train.load_state()
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval()


# --- evaluate --------------------------------------------------------------------------------


class EvaluateParams(Params):
    max_windows: int | None = Field(
        None, ge=1, description="Score at most this many windows of the test split, spread evenly (null: all)."
    )
    batch_size: int = Field(32, ge=1, description="Windows per forward pass.")
    prompt: str = Field("def ", description="The start of the generated sample.")
    sample_bytes: int = Field(100, ge=0, description="Bytes to generate after the prompt (0: no sample).")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy).")


@pipeline.task(params=EvaluateParams)
def evaluate(ctx: StepContext, params: EvaluateParams, prepare: Artifact, train: Artifact) -> dict[str, float]:
    """Test perplexity over non-overlapping windows of the test split, beside the unigram baseline;
    a generated sample in ``sample.txt``."""
    model = load_model(train)
    windows = fixed_windows(read_tokens(prepare, "test"), model.config.block_size, params.max_windows)
    test_loss = mean_loss(model, windows, params.batch_size, torch.device("cpu"))
    if params.sample_bytes and ctx.output_dir is not None:
        sample = generate(model, params.prompt.encode(), params.sample_bytes, params.temperature)
        (ctx.output_dir / "sample.txt").write_bytes(sample)
    return {
        "test_loss": test_loss,
        "test_perplexity": math.exp(test_loss),
        "unigram_perplexity": prepare.metrics["unigram_perplexity"],
    }


# --- register --------------------------------------------------------------------------------


class RegisterParams(Params):
    model_name: str = Field("lm", min_length=1, description="Registered model name in MLflow.")
    max_ratio_to_unigram: float = Field(
        1.0, gt=0, description="Register only below this test perplexity, as a share of the unigram perplexity."
    )


@pipeline.task(params=RegisterParams)
def register(
    ctx: StepContext, params: RegisterParams, prepare: Artifact, train: Artifact, evaluate: Artifact
) -> dict[str, float]:
    """Log the trained model with mlflow.pytorch (input example: a window of test bytes) and
    register it with its test metrics, if it beats the unigram baseline."""
    metrics = evaluate.metrics
    if metrics["test_perplexity"] >= params.max_ratio_to_unigram * metrics["unigram_perplexity"]:
        return {"registered_version": 0.0}
    model = load_model(train)
    example = read_tokens(prepare, "test")[: model.config.block_size].long().numpy()[None, :]
    registered = ctx.register_model(model, params.model_name, input_example=example, metrics=metrics)
    if registered is None:  # the step has no MLflow run
        return {"registered_version": 0.0}
    return {"registered_version": float(registered.version), "champion": float(registered.alias is not None)}
