//! Backend selection. The library code is generic over `B: Backend`; this is
//! where the binary picks a concrete backend. (The `lava-flex` fast path also
//! names `burn-flex`, to recognise it at run time, behind the `flex` feature.)

use crate::error::CliError;

/// How a GGUF file's matrices are held (`--weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsKind {
    /// `native` on the flex backend for a file of quantized matrices, `f32` otherwise.
    #[default]
    Auto,
    /// Dequantized to f32 at load (every backend).
    F32,
    /// Kept in the file's block formats (Q4_0 ... Q6_K) and multiplied in them, with 8-bit
    /// activations as llama.cpp does (flex only).
    Native,
}

impl WeightsKind {
    /// What `self` is for the model at `path` on `backend`: `Auto` becomes `Native` on flex
    /// when the file's projections are in block formats, else `F32`; the others stay.
    pub fn resolve(self, backend: BackendKind, path: &std::path::Path) -> Result<WeightsKind, CliError> {
        // Every synthetic shape's matrices are in block formats.
        let blocks = |path: &std::path::Path| -> Result<bool, CliError> {
            if crate::fetch::synthetic_model(path)?.is_some() {
                return Ok(true);
            }
            lava_llama::has_block_matrices(path).map_err(|e| crate::fetch::load_error(path, e))
        };
        Ok(match self {
            WeightsKind::Auto if backend == BackendKind::Flex && blocks(path)? => {
                WeightsKind::Native
            }
            WeightsKind::Auto => WeightsKind::F32,
            w => w,
        })
    }
}

/// The backends the binary can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// burn-flex: fast portable CPU backend (default).
    Flex,
    /// burn-ndarray: reference CPU backend (exact tests).
    Ndarray,
    /// burn-cuda: NVIDIA GPUs (build with `--features cuda`).
    Cuda,
}

/// Runs `$body` with `B` bound to the chosen backend type and `$device` to its device.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$b:ident, $device:ident| $body:block) => {{
        match $kind {
            $crate::backend::BackendKind::Flex => {
                type $b = burn_flex::Flex<f32>;
                let $device = burn_flex::FlexDevice;
                $body
            }
            $crate::backend::BackendKind::Ndarray => {
                type $b = burn_ndarray::NdArray<f32>;
                let $device = burn_ndarray::NdArrayDevice::Cpu;
                $body
            }
            $crate::backend::BackendKind::Cuda => $crate::backend::cuda_dispatch!($b, $device, $body),
        }
    }};
}

#[cfg(feature = "cuda")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_dispatch {
    ($b:ident, $device:ident, $body:block) => {{
        $crate::backend::check_cuda_driver()?;
        type $b = burn_cuda::Cuda<f32, i32>;
        let $device = burn_cuda::CudaDevice::new(0);
        $body
    }};
}

#[cfg(not(feature = "cuda"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_dispatch {
    ($b:ident, $device:ident, $body:block) => {{
        Err($crate::error::CliError::Backend(
            "this lava binary was built without CUDA support; rebuild with `cargo build --release --features cuda`, or use --backend flex".into(),
        ))
    }};
}

pub use crate::__cuda_dispatch as cuda_dispatch;

/// Checks that an NVIDIA driver with at least one device is present, before any
/// CUDA call: burn-cuda panics in a worker thread without one, which cannot be caught.
pub fn check_cuda_driver() -> Result<(), CliError> {
    let no = |why: &str| {
        Err(CliError::Backend(format!(
            "--backend cuda: {why}; install the NVIDIA driver or use --backend flex"
        )))
    };
    // SAFETY: loading the driver library runs its initialisers, which is what any CUDA program does.
    let lib = match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(l) => l,
        Err(_) => return no("no CUDA driver found (libcuda.so.1 cannot be loaded)"),
    };
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: symbols with the documented CUDA driver API signatures.
    unsafe {
        let init = match lib.get::<CuInit>(b"cuInit\0") {
            Ok(f) => f,
            Err(_) => return no("libcuda.so.1 has no cuInit"),
        };
        if init(0) != 0 {
            return no("the CUDA driver failed to initialise (cuInit)");
        }
        let count = match lib.get::<CuDeviceGetCount>(b"cuDeviceGetCount\0") {
            Ok(f) => f,
            Err(_) => return no("libcuda.so.1 has no cuDeviceGetCount"),
        };
        let mut n = 0i32;
        if count(&mut n) != 0 || n < 1 {
            return no("the CUDA driver reports no GPU");
        }
    }
    Ok(())
}

/// The seed of `--model synthetic:NAME`'s weights (one fixed model per shape).
pub const SYNTHETIC_SEED: u64 = 0x1a7a;

/// Loads a model and tunes it for `kind`: on the CPU backends, decode-step
/// projections are split across the available cores
/// ([`Llama::with_matvec_split`](lava_llama::Llama::with_matvec_split)).
pub fn load_for<B: burn::tensor::backend::Backend>(
    kind: BackendKind,
    weights: WeightsKind,
    path: &std::path::Path,
    device: &B::Device,
) -> Result<(lava_llama::Llama<B>, lava_llama::Tokenizer), CliError> {
    if weights == WeightsKind::Native && kind != BackendKind::Flex {
        return Err(CliError::Usage(format!(
            "--weights native runs on the flex backend only (--backend {}); drop --weights or use --backend flex",
            format!("{kind:?}").to_lowercase()
        )));
    }
    // `Auto` is decided by the loader on the file it opens anyway.
    let format = match weights {
        WeightsKind::Auto => lava_llama::WeightFormat::Auto,
        WeightsKind::Native => lava_llama::WeightFormat::Native,
        WeightsKind::F32 => lava_llama::WeightFormat::F32,
    };
    let (model, tok) = match crate::fetch::synthetic_model(path)? {
        Some(shape) => lava_llama::load_synthetic::<B>(shape, SYNTHETIC_SEED, device, format).map_err(CliError::Model)?,
        None => lava_llama::load_model_with::<B>(path, device, format).map_err(|e| crate::fetch::load_error(path, e))?,
    };
    let parts = match kind {
        BackendKind::Cuda => 1,
        BackendKind::Flex | BackendKind::Ndarray => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok((model.with_matvec_split(parts), tok))
}
