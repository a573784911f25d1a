"""Transformer encoder: conv subsampling, then pre-LayerNorm blocks of masked rotary self-attention + FFN.

With ``causal`` and local or chunked attention it streams: its blocks run unchanged on a
:class:`~emgscale.models.streaming.StreamState` (conv and attention caches) in place of the lengths.
"""

from __future__ import annotations

from torch import Tensor, nn

from emgscale.models.attention import AttentionMask, ConvSubsampling, FeedForward, SelfAttention, layers_span
from emgscale.models.common import Encoder, drop, zero_padding
from emgscale.models.config import TransformerConfig
from emgscale.models.streaming import LengthsOrState


class TransformerBlock(nn.Module):
    """``x + drop(attn(LN(x)))`` then ``x + FFN(LN(x))``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.attention_mask(), cfg.rope_base)
        self.dropout = drop(cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout, "gelu")

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), lengths))
        return x + self.ffn(self.norm2(x))


class TransformerEncoder(Encoder):
    """Conv subsampling + :class:`TransformerBlock` stack + final LayerNorm; output ``d_model`` features."""

    def __init__(self, in_features: int, cfg: TransformerConfig) -> None:
        super().__init__()
        self.subsampling_layer = ConvSubsampling(in_features, cfg.d_model, cfg.subsampling_strides,
                                                 cfg.subsampling_kernel, cfg.causal)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.in_features, self.out_features = in_features, cfg.d_model
        mask = cfg.attention_mask()
        self.span = self.subsampling_layer.span.then(layers_span(mask.span, cfg.num_layers))
        self.alignment_frames = mask.alignment_frames * self.span.stride

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.subsampling_layer.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, C), (B,) -> (B, T', d_model), (B,)."""
        out_lengths = self.output_lengths(lengths)
        return zero_padding(self.encode(x, lengths), out_lengths), out_lengths

    def encode(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        x, lengths = self.subsampling_layer(x, lengths)
        for block in self.blocks:
            x = block(x, lengths)
        return self.norm(x)

    def init_state(self) -> list[Tensor]:
        """The subsampling convs' caches, then each block's attention keys and values."""
        state = self.subsampling_layer.init_state("transformer")
        for block in self.blocks:
            state += block.attn.init_state("transformer")
        return state
