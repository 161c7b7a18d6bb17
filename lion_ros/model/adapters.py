"""LION's mixture of adapters inside every T5 feed-forward sublayer.

Official code: `models/lion_adapters.py` (`Adapter`, `AdapterRouter`, `set_adapter_t5`). The
parameter names are kept (`adapter.adapters.{k}.{down_proj,up_proj,scale}`,
`adapter.router_ratio{1,2}`) so an official checkpoint maps onto ours by prefix alone.

Routing is per sample here: the official code routes a whole batch by its first sample.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerFF

from .config import AdapterConfig


class TaskRouting:
    """The task index of the batch being run, shared by all routers of one model.

    T5's blocks call their FFN with the hidden states only, so the per-sample task index
    reaches the routers through this object instead of through the call chain. The model sets
    it for the duration of one encoder or decoder call (`LionModel.route`). It holds a tensor
    computed from the caller's input, so tracing and export record it as a graph input.
    """

    def __init__(self) -> None:
        self.task_index: torch.Tensor | None = None

    @contextmanager
    def __call__(self, task_index: torch.Tensor) -> Iterator[None]:
        previous, self.task_index = self.task_index, task_index
        try:
            yield
        finally:
            self.task_index = previous


class Adapter(nn.Module):
    """down_proj -> ReLU -> dropout -> up_proj, times a learnable scalar. Starts as the zero map."""

    def __init__(self, d_model: int, bottleneck: int, dropout: float) -> None:
        super().__init__()
        self.down_proj = nn.Linear(d_model, bottleneck)
        self.up_proj = nn.Linear(bottleneck, d_model)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.ones(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # LoRA's initialisation: a random down projection and a zero up projection.
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)
        self.scale.fill_(1.0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(torch.relu(self.down_proj(hidden_states)))
        return self.up_proj(hidden_states) * self.scale


class MixtureOfAdapters(nn.Module):
    """Σ_k adapter_k(h) ⊙ gate_k[t], with t the task index of each sample (official `AdapterRouter`).

    The gates `router_ratio{k+1}` ([num_task_types, d_model]) are static learned per-channel
    weights, not a function of the input, and are not normalised. With a single adapter there
    are no gates and the task index is not read.
    """

    def __init__(self, d_model: int, num_adapters: int, config: AdapterConfig, routing: TaskRouting) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(
            Adapter(d_model, config.bottleneck, config.dropout) for _ in range(num_adapters)
        )
        if num_adapters > 1:
            for k in range(num_adapters):
                self.register_parameter(
                    f"router_ratio{k + 1}", nn.Parameter(torch.empty(config.num_task_types, d_model))
                )
        self.routing = routing
        # False skips the mixture. Training turns it off where the adapters are frozen at zero
        # (stage 0, `stages.skip_idle_adapters`): there it adds exactly 0, yet costs 7 % of a
        # training step on a CPU (bench/bench_train_step.py).
        self.enabled = True
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self) -> None:
        """One-hot: task k uses adapter k only (region -> adapter 0, image -> adapter 1)."""
        for k, gate in enumerate(self.gates()):
            gate.zero_()
            if k < gate.shape[0]:
                gate[k] = 1.0

    def gates(self) -> list[nn.Parameter]:
        if len(self.adapters) == 1:
            return []
        return [getattr(self, f"router_ratio{k + 1}") for k in range(len(self.adapters))]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Adapters stay in float32 when T5 runs in bfloat16 (dtype policy "mixed").
        x = hidden_states.to(self.adapters[0].up_proj.weight.dtype)
        if len(self.adapters) == 1:
            return self.adapters[0](x).to(hidden_states.dtype)
        task_index = self.routing.task_index
        if task_index is None:
            raise RuntimeError("the adapter router needs a task index: run T5 inside `LionModel.route(task_index)`")
        out = torch.zeros_like(x)
        for adapter, gate in zip(self.adapters, self.gates()):
            out = out + adapter(x) * gate[task_index].unsqueeze(1)  # [B, 1, d_model] per-sample gate
        return out.to(hidden_states.dtype)


class T5LayerFFWithAdapters(nn.Module):
    """T5's FFN sublayer plus the adapter mixture, which reads the pre-LayerNorm residual stream.

    output = h + Dropout(FFN(LN(h))) + Router(h). Reuses the original sublayer's modules, so the
    T5 parameter names are unchanged and `adapter.*` is added beside them.
    """

    def __init__(self, ff: T5LayerFF, adapter: MixtureOfAdapters) -> None:
        super().__init__()
        self.DenseReluDense = ff.DenseReluDense
        self.layer_norm = ff.layer_norm
        self.dropout = ff.dropout
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        forwarded_states = self.DenseReluDense(self.layer_norm(hidden_states))
        output = hidden_states + self.dropout(forwarded_states)
        return output + self.adapter(hidden_states) if self.adapter.enabled else output


def add_adapters(
    t5: T5ForConditionalGeneration, num_adapters: int, config: AdapterConfig, routing: TaskRouting
) -> None:
    """Replace the FFN sublayer of every encoder and decoder block (official `set_adapter_t5`)."""
    d_model = t5.config.d_model
    for stack in (t5.encoder, t5.decoder):
        for block in stack.block:
            block.layer[-1] = T5LayerFFWithAdapters(
                block.layer[-1], MixtureOfAdapters(d_model, num_adapters, config, routing)
            )
