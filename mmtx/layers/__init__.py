"""Transformer building blocks: attention, embeddings, encoder/decoder stacks,
the cross-modal attention blocks fusion stacks, masked pooling."""
from mmtx.layers import audio, video
from mmtx.layers.attention import (MultiHeadAttention, causal_mask,
                                   combine_masks, dot_product_attention,
                                   padding_mask)
from mmtx.layers.blocks import (AdditiveAttention, CrossAttentionBlock,
                                GatedCrossAttentionBlock, masked_mean)
from mmtx.layers.embeddings import (PatchEmbedding, PositionEmbedding,
                                    TokenEmbedding,
                                    sincos_2d_position_encoding,
                                    sinusoidal_position_encoding)
from mmtx.layers.transformer import (BlockFields, Decoder, DecoderBlock,
                                     Encoder, EncoderBlock, Mlp,
                                     REMAT_POLICIES)

__all__ = [
    "audio", "video", "MultiHeadAttention", "causal_mask", "combine_masks",
    "dot_product_attention", "padding_mask", "PatchEmbedding",
    "PositionEmbedding", "TokenEmbedding", "sincos_2d_position_encoding",
    "sinusoidal_position_encoding", "Decoder", "DecoderBlock", "Encoder",
    "EncoderBlock", "Mlp", "REMAT_POLICIES", "AdditiveAttention",
    "CrossAttentionBlock", "GatedCrossAttentionBlock", "masked_mean",
    "BlockFields",
]
