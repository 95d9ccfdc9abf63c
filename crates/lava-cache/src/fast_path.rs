//! The one switch of the CPU fast path. With the `flex` feature, these are
//! `lava-flex`'s host kernels, which run when the backend is `burn-flex` and
//! decline (`None`, or the input handed back) otherwise; without it, every
//! function declines. Either way the caller's generic tensor-op code is the
//! fallback and the reference.

#[cfg(feature = "flex")]
pub(crate) use lava_flex::attention::{cumulative_column_sums, decode_attention, prefill_attention, value_norm_max, window_attention_mean, Segment};
#[cfg(feature = "flex")]
pub(crate) use lava_flex::slots::{chunk_attention, window_attention as window_attention_slots};
#[cfg(feature = "flex")]
pub(crate) use lava_flex::bridge::{write_in_place, write_ints_in_place};
#[cfg(feature = "flex")]
pub(crate) use lava_flex::stored::{decode_attention_f16, decode_attention_q8_0, quantize_q8_0 as quantize_q8_0_host, write_f16_in_place, write_q8_0_in_place};

#[cfg(not(feature = "flex"))]
pub(crate) use declined::*;

/// Without the `flex` feature: the same signatures, always declining.
#[cfg(not(feature = "flex"))]
mod declined {
    use std::ops::Range;

    use burn::tensor::{backend::Backend, Int, Tensor};

    /// Rows `rows` of a K/V storage that belong to KV head `kv_head`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Segment {
        pub kv_head: usize,
        pub rows: Range<usize>,
    }

    pub(crate) fn write_in_place<B: Backend, const D: usize, const S: usize>(
        dst: Tensor<B, D>,
        _src: &Tensor<B, S>,
        _runs: &[(usize, usize, usize)],
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        Err(dst)
    }

    pub(crate) fn write_ints_in_place<B: Backend, const D: usize>(
        dst: Tensor<B, D, Int>,
        _at: usize,
        _values: &[usize],
    ) -> Result<Tensor<B, D, Int>, Tensor<B, D, Int>> {
        Err(dst)
    }

    pub(crate) fn decode_attention<B: Backend, const K: usize>(
        _q: &Tensor<B, 3>,
        _kv_heads: usize,
        _keys: &Tensor<B, K>,
        _values: &Tensor<B, K>,
        _segments: &[Segment],
    ) -> Option<Tensor<B, 3>> {
        None
    }

    pub(crate) fn decode_attention_f16<B: Backend, const K: usize>(
        _q: &Tensor<B, 3>,
        _kv_heads: usize,
        _keys: &Tensor<B, K>,
        _values: &Tensor<B, K>,
        _segments: &[Segment],
    ) -> Option<Tensor<B, 3>> {
        None
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode_attention_q8_0<B: Backend, const K: usize>(
        _q: &Tensor<B, 3>,
        _kv_heads: usize,
        _key_codes: &Tensor<B, K, Int>,
        _key_scales: &Tensor<B, K>,
        _value_codes: &Tensor<B, K, Int>,
        _value_scales: &Tensor<B, K>,
        _segments: &[Segment],
    ) -> Option<Tensor<B, 3>> {
        None
    }

    pub(crate) fn quantize_q8_0_host<B: Backend, const N: usize>(_x: &Tensor<B, N>) -> Option<(Tensor<B, N, Int>, Tensor<B, N>)> {
        None
    }

    pub(crate) fn write_f16_in_place<B: Backend, const D: usize, const S: usize>(
        dst: Tensor<B, D>,
        _src: &Tensor<B, S>,
        _runs: &[(usize, usize, usize)],
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        Err(dst)
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn write_q8_0_in_place<B: Backend, const D: usize, const S: usize>(
        codes: Tensor<B, D, Int>,
        scales: Tensor<B, D>,
        _src: &Tensor<B, S>,
        _runs: &[(usize, usize, usize)],
    ) -> Result<(Tensor<B, D, Int>, Tensor<B, D>), (Tensor<B, D, Int>, Tensor<B, D>)> {
        Err((codes, scales))
    }

    pub(crate) fn chunk_attention<B: Backend, const K: usize>(
        _q: &Tensor<B, 3>,
        _kv_heads: usize,
        _keys: &Tensor<B, K>,
        _values: &Tensor<B, K>,
        _slots: &[(usize, usize)],
        _first: usize,
    ) -> Option<Tensor<B, 3>> {
        None
    }

    pub(crate) fn window_attention_slots<B: Backend, const K: usize>(
        _q: &Tensor<B, 3>,
        _kv_heads: usize,
        _keys: &Tensor<B, K>,
        _slots: &[(usize, usize)],
        _first: usize,
        _weight: Option<f32>,
    ) -> Option<Vec<f32>> {
        None
    }

    pub(crate) fn prefill_attention<B: Backend>(_q: &Tensor<B, 3>, _k: &Tensor<B, 3>, _v: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        None
    }

    pub(crate) fn window_attention_mean<B: Backend>(_q: Tensor<B, 3>, _k: &Tensor<B, 3>, _group: usize, _window: usize) -> Option<Vec<f32>> {
        None
    }

    pub(crate) fn cumulative_column_sums<B: Backend>(
        _q: Tensor<B, 3>,
        _k: &Tensor<B, 3>,
        _group: usize,
        _rows: usize,
        _first: usize,
        _cols: usize,
    ) -> Option<Vec<f32>> {
        None
    }

    pub(crate) fn value_norm_max<B: Backend>(_v: &Tensor<B, 3>, _prefix: usize) -> Option<Vec<f32>> {
        None
    }
}
