"""A small GPT-style model for the model-parallel tests, and its one-process training.

Its children in order (embed, blocks, norm, head) compute its forward, so a
pipeline can cut it; attention reads its head count from ``n_head`` and infers
the local heads from the projection's width, so tensor parallelism can split it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Embed(nn.Module):
    def __init__(self, vocab, dim, seq):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)

    def forward(self, ids):
        return self.tok(ids) + self.pos(torch.arange(ids.shape[-1]))


class Attention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, dim // n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        qkv = self.qkv(x)     # local heads under tensor parallelism; the whole sequence under
        b, t, _ = qkv.shape   # sequence parallelism (x holds this rank's part)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, n_head)
        self.ln2, self.mlp = nn.LayerNorm(dim), MLP(dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PreNormResidual(nn.Module):
    """``x + inner(norm(x))``: half of a transformer block."""

    def __init__(self, dim, inner):
        super().__init__()
        self.ln, self.inner = nn.LayerNorm(dim), inner

    def forward(self, x):
        return x + self.inner(self.ln(x))


class HalvedBlock(nn.Module):
    """A transformer block as two residual children a pipeline may cut between."""

    def __init__(self, dim, n_head):
        super().__init__()
        self.attn = PreNormResidual(dim, Attention(dim, n_head))
        self.mlp = PreNormResidual(dim, MLP(dim))

    def forward(self, x):
        return self.mlp(self.attn(x))

    def pipeline_sublayers(self):
        return ["attn", "mlp"]


class GPT(nn.Module):
    def __init__(self, vocab=64, dim=32, n_head=4, n_layer=4, seq=16, halved_blocks=False):
        super().__init__()
        self.embed = Embed(vocab, dim, seq)
        block = HalvedBlock if halved_blocks else Block
        self.blocks = nn.ModuleList(block(dim, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


TP_PLAN = {"embed.tok": "vocab", "blocks.*.attn": "heads", "blocks.*.attn.qkv": "colwise_qkv",
           "blocks.*.attn.proj": "rowwise", "blocks.*.mlp.fc1": "colwise",
           "blocks.*.mlp.fc2": "rowwise", "head": "colwise"}


# sequence parallelism too: norms and residuals on 1/tp of the sequence
TP_SP_PLAN = {"embed": "scatter_sequence", "embed.tok": "vocab", "blocks.*.ln1": "sequence",
              "blocks.*.ln2": "sequence", "norm": "sequence", "blocks.*.attn": "heads",
              "blocks.*.attn.qkv": "colwise_qkv_sp", "blocks.*.attn.proj": "rowwise_sp",
              "blocks.*.mlp.fc1": "colwise_sp", "blocks.*.mlp.fc2": "rowwise_sp",
              "head": "colwise_sp"}


def lm_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(**kw)


def batches(steps: int, batch: int = 8, seq: int = 16, vocab: int = 64, seed: int = 1):
    """``steps`` (ids, targets) batches of a learnable sequence task (next token = f(token))."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        out.append((ids, (ids * 7 + 3) % vocab))
    return out


def reference_losses(steps: int, lr: float = 0.05, **kw) -> list[float]:
    """The losses of ``steps`` Adam steps of the whole model in one process."""
    model = make_gpt(**kw)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for ids, tg in batches(steps):
        opt.zero_grad()
        loss = lm_loss(model(ids), tg)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
