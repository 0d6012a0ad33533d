"""The paper's Conv-based adapter: strided 1-D convolutions, then the Base transformer stack.

Letters: B batch, T encoder frames, T' = adapter outputs, C = d_enc (the convolutions keep the
encoder's width; the Base stack's in-projection then maps d_enc -> hidden_size).

    conv_layers x [Conv1d(C, C, kernel, stride, padding=kernel//2) -> LayerNorm -> ReLU]
    -> TransformerStack (in-proj, num_layers BERT layers, out-proj to d_llm)

conv_final_relu=False drops the ReLU after the last convolution, as in the authors' code
(`ConvolutionalAdapter`: conv -> LayerNorm -> ReLU -> conv -> LayerNorm; `preset: paper`). The
ReLU has no weights, so a checkpoint loads either way (but computes something else).

With the defaults (2 layers, kernel 3, stride 2, padding 1) each layer maps n frames to
ceil(n / 2), so T' = ceil(ceil(T / 2) / 2): a 4x shorter sequence. Padded frames are zeroed before
every convolution, so a padded batch sees exactly the zeros a lone item's conv padding would.
"""

from __future__ import annotations

import torch
from torch import nn

from speechwire.adapters.interface import Adapter, AdapterContext, AdapterOutput, AdapterTargets, check_input, lengths_to_mask
from speechwire.adapters.transformer import STACK_FIELDS, TransformerStack
from speechwire.registry import ADAPTERS
from speechwire.schema import AdapterConfig


def conv_output_length(lengths: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Exact Conv1d output length: floor((n + 2*padding - kernel) / stride) + 1.

    Args:
        lengths: (B,) int input lengths.
    Returns:
        (B,) int output lengths (kernel 3, stride 2, padding 1: ceil(n / 2)).
    """
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


class ConvBlock(nn.Module):
    """Conv1d -> LayerNorm -> ReLU (or no activation) on (B, T, C), zeroing padded frames first."""

    def __init__(self, channels: int, kernel: int, stride: int, relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, kernel // 2
        self.conv = nn.Conv1d(channels, channels, kernel, stride=stride, padding=self.padding)
        self.norm = nn.LayerNorm(channels)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C), (B,) -> (B, T', C), (B,)."""
        x = x * lengths_to_mask(lengths, x.shape[1])[..., None]  # padding never leaks into real outputs
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, C, T) -> (B, C, T') -> (B, T', C)
        x = self.act(self.norm(x))
        return x, conv_output_length(lengths, self.kernel, self.stride, self.padding)


@ADAPTERS.register("conv")
class ConvAdapter(Adapter):
    """Two strided convolutions (4x shorter) before the Base stack.

    Config fields: conv_layers (2), conv_kernel (3), conv_stride (2), conv_final_relu (True),
    plus the stack's hidden_size / num_layers / num_heads / ffn_size / dropout.
    """

    deterministic_length = True
    config_fields = ("conv_layers", "conv_kernel", "conv_stride", "conv_final_relu", *STACK_FIELDS)

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(cfg, ctx)
        n = cfg.conv_layers
        self.convs = nn.ModuleList(
            ConvBlock(ctx.in_dim, cfg.conv_kernel, cfg.conv_stride, relu=i < n - 1 or cfg.conv_final_relu)
            for i in range(n)
        )
        self.stack = TransformerStack(cfg, ctx.in_dim, ctx.out_dim)

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: AdapterTargets | None = None
    ) -> AdapterOutput:
        """Args:
            hidden: (B, T, d_enc) encoder states; lengths: (B,) valid frames; targets: unused.
        Returns:
            AdapterOutput with embeds (B, T', d_llm), lengths (B,) = output_length(lengths).
        """
        check_input(hidden, lengths, self.ctx.in_dim, "conv adapter")
        x = hidden
        for block in self.convs:
            x, lengths = block(x, lengths)  # (B, T_i, d_enc)
        return AdapterOutput(self.stack(x, lengths), lengths)

    def layer_list(self) -> list[nn.Module]:
        """The length-reducing layers in the order forward applies them (no-op activations left out)."""
        return [m for b in self.convs for m in (b.conv, b.norm, b.act) if not isinstance(m, nn.Identity)]

    def output_length(self, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.convs:
            lengths = conv_output_length(lengths, block.kernel, block.stride, block.padding)
        return lengths
