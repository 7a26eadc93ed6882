"""The reference to race against (issue 6 §1): a plain PyTorch GPT training loop, written the way a user would
write one without proxyscale.

An ``nn.Module`` GPT with ``F.scaled_dot_product_attention``, with the paper's model choices where they cost
(next to) nothing, so that it does the same arithmetic as one proxyscale member: pre-LayerNorm without biases,
qk-layernorm per head, RoPE, GeLU MLP 4·d, untied output layer, cross-entropy + z-loss 1e-4. Trained with
``torch.optim.AdamW`` (``fused=True`` on CUDA), global-norm clipping at 1 and bf16 autocast (fp32 where the
precision asks for it); eager, or ``torch.compile`` of the model. Not part of the package: only the benchmark
imports it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.ln1 = nn.LayerNorm(d, eps=1e-6, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_norm = nn.LayerNorm(self.dh, eps=1e-6, bias=False)
        self.k_norm = nn.LayerNorm(self.dh, eps=1e-6, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, eps=1e-6, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.out = nn.Linear(4 * d, d, bias=False)
        inv = 1.0 / 10000 ** (torch.arange(0, self.dh, 2).float() / self.dh)
        ang = torch.outer(torch.arange(seq_len).float(), inv)
        ang = torch.cat([ang, ang], dim=-1)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        return x * self.cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * self.sin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        q, k = self.rope(self.q_norm(q)), self.rope(self.k_norm(k))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, d: int, depth: int, heads: int, vocab: int, seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, seq_len) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d, eps=1e-6, bias=False)
        self.unembed = nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 1 / math.sqrt(d) if name == "embed.weight" else 1 / math.sqrt(p.shape[1])
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.unembed(self.ln_f(x)).float()
        lse = torch.logsumexp(logits, dim=-1)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + 1e-4 * lse.square().mean()


class ReferenceLoop:
    """One training run: ``step(x, y)`` is forward, backward, clip at 1, AdamW."""

    def __init__(self, d: int, depth: int, heads: int, vocab: int, seq_len: int, device: torch.device,
                 precision: str, compile: bool) -> None:
        torch.manual_seed(0)
        self.model = GPT(d, depth, heads, vocab, seq_len).to(device)
        self.forward = torch.compile(self.model) if compile else self.model
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                                     weight_decay=0.0, **fused)
        self.device, self.precision = device, precision

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = self.forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
