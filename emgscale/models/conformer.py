"""Conformer encoder (Gulati et al. 2020): conv subsampling, then macaron blocks
(half FFN, masked rotary self-attention, convolution module, half FFN, LayerNorm).

The convolution module uses LayerNorm instead of BatchNorm after its depthwise conv, so no statistic
crosses sequences or padding; the depthwise conv is masked and, with ``causal``, left-padded.
With ``causal`` and local or chunked attention the encoder streams: its blocks run unchanged on a
:class:`~emgscale.models.streaming.StreamState` (conv and attention caches) in place of the lengths.
"""

from __future__ import annotations

from torch import Tensor, nn

from emgscale.models.attention import ConvSubsampling, FeedForward, SelfAttention, layers_span
from emgscale.models.common import Encoder, MaskedConv1d, Span, drop, zero_padding
from emgscale.models.config import ConformerConfig
from emgscale.models.streaming import LengthsOrState




class ConvModule(nn.Module):
    """LN -> pointwise (2d) -> GLU -> masked depthwise conv -> LN -> SiLU -> pointwise -> dropout."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise = MaskedConv1d(d_model, d_model, kernel_size, causal=causal, groups=d_model)
        self.conv_norm = nn.LayerNorm(d_model)
        self.act = nn.SiLU()
        self.pointwise2 = nn.Linear(d_model, d_model)
        self.dropout = drop(dropout)

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        h = nn.functional.glu(self.pointwise1(self.norm(x)), dim=-1)
        h, _ = self.depthwise(h, lengths)
        return self.dropout(self.pointwise2(self.act(self.conv_norm(h))))


class ConformerBlock(nn.Module):
    """``x + FFN/2``, ``x + attn``, ``x + conv``, ``x + FFN/2``, LayerNorm."""

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ffn1_norm, self.ffn1 = nn.LayerNorm(d), FeedForward(d, cfg.ffn_dim, cfg.dropout, "silu")
        self.attn_norm = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.num_heads, cfg.dropout, cfg.attention_mask(), cfg.rope_base)
        self.dropout = drop(cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout, cfg.causal)
        self.ffn2_norm, self.ffn2 = nn.LayerNorm(d), FeedForward(d, cfg.ffn_dim, cfg.dropout, "silu")
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, lengths: LengthsOrState) -> Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_norm(x))
        x = x + self.dropout(self.attn(self.attn_norm(x), lengths))
        x = x + self.conv(x, lengths)
        x = x + 0.5 * self.ffn2(self.ffn2_norm(x))
        return self.norm(x)


class ConformerEncoder(Encoder):
    """Conv subsampling + :class:`ConformerBlock` stack; output ``d_model`` features."""

    def __init__(self, in_features: int, cfg: ConformerConfig) -> None:
        super().__init__()
        if cfg.conv_kernel < 1:
            raise ValueError(f"conformer.conv_kernel must be >= 1, got {cfg.conv_kernel}")
        self.subsampling_layer = ConvSubsampling(in_features, cfg.d_model, cfg.subsampling_strides,
                                                 cfg.subsampling_kernel, cfg.causal)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_layers))
        self.in_features, self.out_features = in_features, cfg.d_model
        mask = cfg.attention_mask()
        conv_span = self.blocks[0].conv.depthwise.span if cfg.num_layers else Span(0, 0, 1)
        self.span = self.subsampling_layer.span.then(layers_span(mask.span.then(conv_span), cfg.num_layers))
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
        return x

    def init_state(self) -> list[Tensor]:
        """The subsampling convs' caches, then per block the attention's keys and values and the
        depthwise conv's cache, in the order they run."""
        state = self.subsampling_layer.init_state("conformer")
        for block in self.blocks:
            state += block.attn.init_state("conformer") + block.conv.depthwise.init_state("conformer.conv_kernel")
        return state
