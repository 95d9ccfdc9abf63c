//! The bridge between Burn tensors and host memory on the `burn-flex` CPU
//! backend: recognising flex at run time (`TypeId`; primitives move through
//! `Box<dyn Any>`, no `unsafe`), reading an f32 tensor's storage, making a
//! tensor from host values, and writing into a tensor's storage in place.
//! Every function declines (`None` / `Err` with the input back) on any other
//! backend, dtype or layout, so callers fall back to Burn's ops.

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

/// Whether a flex tensor's storage is its elements in order from offset 0
/// (what the host kernels read and write directly).
pub fn is_plain(f: &FlexTensor) -> bool {
    f.is_contiguous() && f.layout().start_offset() == 0
}

/// Whether `B` is the flex backend.
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// The flex primitive of an f32 tensor, or `None` on any other backend or dtype.
pub fn to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    float_to_flex(t)
}

/// The flex tensor behind a float tensor of `B` of any float dtype (`to_flex`
/// accepts f32 only), `None` unless `B` is flex.
pub fn float_to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    if !is_flex::<B>() {
        return None;
    }
    match t.into_primitive() {
        TensorPrimitive::Float(p) => {
            let boxed: Box<dyn Any> = Box::new(p);
            boxed.downcast::<FlexTensor>().ok().map(|b| *b)
        }
        TensorPrimitive::QFloat(_) => None,
    }
}

/// A float tensor of `B` (of any float dtype) around a flex tensor, `None` unless `B` is flex.
pub fn float_from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    from_flex(t)
}

/// An integer tensor of `B` around a flex tensor, `None` unless `B` is flex.
pub fn int_from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D, Int>> {
    let boxed: Box<dyn Any> = Box::new(t);
    let prim = boxed.downcast::<B::IntTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(*prim))
}

/// The flex tensor behind an integer tensor of `B`, `None` unless `B` is flex.
pub fn int_to_flex<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Option<FlexTensor> {
    if !is_flex::<B>() {
        return None;
    }
    let boxed: Box<dyn Any> = Box::new(t.into_primitive());
    boxed.downcast::<FlexTensor>().ok().map(|b| *b)
}

/// A contiguous f32 tensor of `shape` holding `values`, or `None` unless `B` is flex.
pub fn from_host<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Option<Tensor<B, D>> {
    from_flex(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// Wraps a flex primitive back into a float tensor of `B` (`None` unless `B` is flex).
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(t);
    let prim = boxed.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*prim)))
}

/// Copies `src` (any f32 tensor, read in row-major order) into `dst` in
/// place: `runs` are `(dst_offset, src_offset, len)` in elements of the
/// storages. `Err(dst)`, untouched, unless `B` is flex, both are f32, `dst` is
/// contiguous from offset 0, uniquely owned (no clone or view of it alive)
/// and every run fits.
///
/// `slice_assign` on flex copies the whole destination first (0.21 keeps a
/// second reference to it while writing), which makes every decode append
/// cost a copy of the layer's cache.
pub fn write_in_place<B: Backend, const D: usize, const S: usize>(
    dst: Tensor<B, D>,
    src: &Tensor<B, S>,
    runs: &[(usize, usize, usize)],
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_flex::<B>() || dst.dtype() != DType::F32 {
        return Err(dst);
    }
    let Some(src) = to_flex(src.clone()).map(|s| s.to_contiguous()) else { return Err(dst) };
    let keep = dst.clone();
    let Some(mut flex) = to_flex(dst) else { return Err(keep) };
    drop(keep);
    let plain = is_plain(&flex);
    let from = src.storage::<f32>();
    let written = plain
        && match flex.try_storage_mut::<f32>() {
            Some(to) if runs.iter().all(|&(d, s, n)| d + n <= to.len() && s + n <= from.len()) => {
                for &(d, s, n) in runs {
                    to[d..d + n].copy_from_slice(&from[s..s + n]);
                }
                true
            }
            _ => false,
        };
    let dst = from_flex(flex).expect("B is flex");
    if written {
        Ok(dst)
    } else {
        Err(dst)
    }
}

/// As [`write_in_place`] for an integer tensor: writes `values` at element
/// offset `at`.
pub fn write_ints_in_place<B: Backend, const D: usize>(dst: Tensor<B, D, Int>, at: usize, values: &[usize]) -> Result<Tensor<B, D, Int>, Tensor<B, D, Int>> {
    if !is_flex::<B>() {
        return Err(dst);
    }
    let boxed: Box<dyn Any> = Box::new(dst.into_primitive());
    let mut flex = *boxed.downcast::<FlexTensor>().expect("B is flex");
    let plain = is_plain(&flex);
    let written = plain
        && match flex.dtype() {
            DType::I64 => put(flex.try_storage_mut::<i64>(), at, values, |v| v as i64),
            DType::I32 => put(flex.try_storage_mut::<i32>(), at, values, |v| v as i32),
            _ => false,
        };
    let boxed: Box<dyn Any> = Box::new(flex);
    let dst = Tensor::from_primitive(*boxed.downcast::<B::IntTensorPrimitive>().expect("B is flex"));
    if written {
        Ok(dst)
    } else {
        Err(dst)
    }
}

fn put<E: Copy>(to: Option<&mut [E]>, at: usize, values: &[usize], cast: impl Fn(usize) -> E) -> bool {
    match to {
        Some(to) if at + values.len() <= to.len() => {
            to[at..at + values.len()].iter_mut().zip(values).for_each(|(t, &v)| *t = cast(v));
            true
        }
        _ => false,
    }
}

