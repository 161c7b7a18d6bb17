"""LION's vision aggregator: region-level features from several ViT depths.

Official code: `FusionAdapter(num_blocks=2, dim=1408)` in `models/lion_adapters.py`, two
Hugging Face `BertLayer`s (self-attention, cross-attention, FFN; post-LN) whose query stream is a
deep ViT layer and whose k-th block cross-attends to a shallower one.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer, BertOutput, BertSelfOutput

from .config import AggregatorConfig


class VisionAggregator(nn.Module):
    def __init__(self, config: AggregatorConfig, hidden_size: int, initializer_range: float) -> None:
        super().__init__()
        bert_config = BertConfig(
            hidden_size=hidden_size,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=config.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_probs_dropout_prob,
            layer_norm_eps=config.layer_norm_eps,
            is_decoder=True,  # BertLayer only builds cross-attention for decoders
            add_cross_attention=True,
            attn_implementation="sdpa",
        )
        self.blocks = nn.ModuleList(BertLayer(bert_config, layer_idx=i) for i in range(config.num_layers))
        for block in self.blocks:
            # transformers >= 5 makes decoder self-attention causal when no mask is given; the
            # official model (transformers 4.42, no mask) attends bidirectionally.
            block.attention.self.is_causal = False
        self.initializer_range = initializer_range
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=self.initializer_range)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero output projections make every sublayer start as LayerNorm(input): the aggregator
        # begins close to the identity on the deep ViT features.
        for module in self.modules():
            if isinstance(module, (BertSelfOutput, BertOutput)):
                nn.init.zeros_(module.dense.weight)

    def forward(self, hidden_states: torch.Tensor, cross_states: list[torch.Tensor]) -> torch.Tensor:
        """hidden_states: [B, N, width], the main ViT layer; cross_states[k]: [B, N, width] for block k."""
        for block, encoder_hidden_states in zip(self.blocks, cross_states):
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
        return hidden_states
