//! Gemma 3 against an independent reference: a tiny Gemma 3 GGUF (7 layers,
//! so five local sliding-window layers, one global, one local again; random
//! weights; head_dim 16 where hidden/heads is 8; tied embeddings) written here
//! byte by byte, and a loop-by-loop f64 forward pass written here from Gemma
//! 3's definition (as llama.cpp's `gemma3` graph computes it). Nothing of the
//! crate is used but its public loading API and caches: the GGUF writer, the
//! Q8_0 quantizer, the weights and the reference are all this file's.
//!
//! The window is 4 positions and the prompt 13 tokens, so every local layer
//! masks positions past its window: the reference's attention loop skips
//! them, the crate's ring cache never holds them.
//!
//! Checked: the generic path (ndarray) with the whole prompt at once, with a
//! 3-token prefill then one decode step per token, and with prefill chunks
//! of 5 and 8 (a chunk longer than the window); a full cache without windows
//! refused; with the `flex` feature, the host path with packed f32 weights and
//! with native Q8_0 weights.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn_ndarray::NdArray;
use lava_cache::{FullCache, KvCache, SlidingWindowCache};
use lava_llama::{Llama, Logits};

type Nd = NdArray<f32>;

const VOCAB: usize = 64;
const HIDDEN: usize = 32;
const FF: usize = 64;
const LAYERS: usize = 7;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const EPS: f64 = 1e-6;
/// RoPE base of the global layers (the file's `rope.freq_base`).
const THETA_GLOBAL: f64 = 1_000_000.0;
/// RoPE base of the local layers (Gemma 3's, not in the file).
const THETA_LOCAL: f64 = 10_000.0;
const WINDOW: usize = 4;
/// Gemma 3: every 6th layer is global.
const PATTERN: usize = 6;

const TOKENS: [u32; 13] = [2, 17, 42, 5, 63, 0, 9, 33, 21, 8, 50, 11, 30];

/// Weights by GGUF tensor name: (shape in row-major `[rows, cols]` order, values).
type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Deterministic random weights. Norm gains spread around 1 (the post norms
/// and q/k norms wider, so that a norm applied to the wrong vector shows).
fn weights(seed: u64) -> Weights {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut w = Weights::new();
    let mut mat = |w: &mut Weights, name: String, rows: usize, cols: usize, scale: f64| {
        let v = (0..rows * cols).map(|_| ((next() * 2.0 - 1.0) * scale) as f32).collect();
        w.insert(name, (vec![rows, cols], v));
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    mat(&mut w, "token_embd.weight".into(), VOCAB, HIDDEN, 0.3);
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        mat(&mut w, n("attn_q"), q, HIDDEN, 0.3);
        mat(&mut w, n("attn_k"), kv, HIDDEN, 0.3);
        mat(&mut w, n("attn_v"), kv, HIDDEN, 0.3);
        mat(&mut w, n("attn_output"), HIDDEN, q, 0.3);
        mat(&mut w, n("ffn_gate"), FF, HIDDEN, 0.5);
        mat(&mut w, n("ffn_up"), FF, HIDDEN, 0.3);
        mat(&mut w, n("ffn_down"), HIDDEN, FF, 0.3);
    }
    let mut gains = |w: &mut Weights, name: String, len: usize, lo: f64, span: f64| {
        let v = (0..len).map(|_| (lo + span * next()) as f32).collect();
        w.insert(name, (vec![len], v));
    };
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        gains(&mut w, n("attn_norm"), HIDDEN, 0.8, 0.4);
        gains(&mut w, n("post_attention_norm"), HIDDEN, 0.2, 1.5);
        gains(&mut w, n("ffn_norm"), HIDDEN, 0.8, 0.4);
        gains(&mut w, n("post_ffw_norm"), HIDDEN, 0.2, 1.5);
        gains(&mut w, n("attn_q_norm"), HEAD_DIM, 0.3, 1.5);
        gains(&mut w, n("attn_k_norm"), HEAD_DIM, 0.3, 1.5);
    }
    gains(&mut w, "output_norm.weight".into(), HIDDEN, 0.8, 0.4);
    w
}

// ---------------------------------------------------------------- f16 / Q8_0

/// f32 -> IEEE half, round to nearest even (normal and subnormal range; the
/// scales here are small positive numbers).
fn f16_bits(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn f16_value(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// ggml's Q8_0: blocks of 32, `d = amax / 127` stored as f16, `q = round(x / d)`.
fn q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16_bits(d).to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    out
}

/// The values a Q8_0 file holds for `values`: `q * f16(d)`.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn q8_0_values(values: &[f32]) -> Vec<f32> {
    let bytes = q8_0(values);
    let mut out = Vec::with_capacity(values.len());
    for block in bytes.chunks_exact(34) {
        let d = f16_value(u16::from_le_bytes([block[0], block[1]]));
        out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
    }
    out
}

// ------------------------------------------------------------- GGUF writing

const GGUF_U32: u32 = 4;
const GGUF_F32: u32 = 6;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;
const GGML_F32: u32 = 0;
const GGML_Q8_0: u32 = 8;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
}

/// A GGUF v3 image: `meta` key/values, then the tensors (matrices in Q8_0
/// when `quantize`, vectors always F32), each at a 32-byte aligned offset.
fn gguf(meta: &[(String, Meta)], w: &Weights, quantize: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((w.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut out, key);
        match value {
            Meta::U32(v) => {
                out.extend(GGUF_U32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                out.extend(GGUF_F32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Meta::Str(s) => {
                out.extend(GGUF_STRING.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::Strs(a) => {
                out.extend(GGUF_ARRAY.to_le_bytes());
                out.extend(GGUF_STRING.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for s in a {
                    put_str(&mut out, s);
                }
            }
        }
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, (shape, values)) in w {
        let (ty, bytes) = if quantize && shape.len() == 2 {
            (GGML_Q8_0, q8_0(values))
        } else {
            (GGML_F32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        // ggml order: the innermost (column) dimension first.
        for &d in shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        data.extend(bytes);
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.extend(data);
    out
}

/// A Gemma 3 GGUF of `w` with a SentencePiece vocabulary of `VOCAB` tokens.
fn gemma3_gguf(w: &Weights, quantize: bool) -> Vec<u8> {
    let k = |s: &str| format!("gemma3.{s}");
    let mut tokens: Vec<String> = vec!["<pad>".into(), "<eos>".into(), "<bos>".into(), "<unk>".into()];
    tokens.extend((4..VOCAB).map(|i| format!("\u{2581}t{i}")));
    let meta = vec![
        ("general.architecture".to_string(), Meta::Str("gemma3".into())),
        (k("block_count"), Meta::U32(LAYERS as u32)),
        (k("context_length"), Meta::U32(256)),
        (k("embedding_length"), Meta::U32(HIDDEN as u32)),
        (k("feed_forward_length"), Meta::U32(FF as u32)),
        (k("attention.head_count"), Meta::U32(HEADS as u32)),
        (k("attention.head_count_kv"), Meta::U32(KV_HEADS as u32)),
        (k("attention.key_length"), Meta::U32(HEAD_DIM as u32)),
        (k("attention.value_length"), Meta::U32(HEAD_DIM as u32)),
        (k("attention.layer_norm_rms_epsilon"), Meta::F32(EPS as f32)),
        (k("attention.sliding_window"), Meta::U32(WINDOW as u32)),
        (k("rope.freq_base"), Meta::F32(THETA_GLOBAL as f32)),
        ("tokenizer.ggml.model".to_string(), Meta::Str("llama".into())),
        ("tokenizer.ggml.tokens".to_string(), Meta::Strs(tokens)),
        ("tokenizer.ggml.bos_token_id".to_string(), Meta::U32(2)),
        ("tokenizer.ggml.eos_token_id".to_string(), Meta::U32(1)),
        ("tokenizer.ggml.unknown_token_id".to_string(), Meta::U32(3)),
    ];
    gguf(&meta, w, quantize)
}

/// The weights a file written with `quantize` holds (Q8_0 matrices read back).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn as_stored(w: &Weights, quantize: bool) -> Weights {
    w.iter()
        .map(|(n, (s, v))| (n.clone(), (s.clone(), if quantize && s.len() == 2 { q8_0_values(v) } else { v.clone() })))
        .collect()
}

// ---------------------------------------------------------------- reference

/// Gemma 3's forward pass, f64, one loop at a time: logits `[T][VOCAB]`.
///
/// `x = token_embd[t] * sqrt(HIDDEN)`. Per layer (global when
/// `(l + 1) % 6 == 0`, else local with window `WINDOW`): `h = rmsnorm(x) *
/// attn_norm`; `q = Wq h`, `k = Wk h`, `v = Wv h`; each head of q and k:
/// `rmsnorm(head) * q_norm` / `k_norm`, then rotate-half RoPE at its position
/// with base 1e6 (global) or 1e4 (local); softmax attention with
/// `1/sqrt(head_dim)` over keys `j <= i` (local: and `i - j < WINDOW`), KV
/// head `h / (HEADS / KV_HEADS)`; `x += rmsnorm(Wo attn) * post_attention_norm`;
/// `h2 = rmsnorm(x) * ffn_norm`; `x += rmsnorm(Wdown (gelu_tanh(Wgate h2) * Wup
/// h2)) * post_ffw_norm`. Logits: `token_embd · rmsnorm(x) * output_norm`.
/// The stored gains are used as they are (a GGUF file holds Gemma's `1 + w`).
fn reference(w: &Weights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let get = |n: &str| -> Vec<f64> { w[n].1.iter().map(|&x| x as f64).collect() };
    let mv = |m: &[f64], x: &[f64]| -> Vec<f64> {
        let cols = x.len();
        (0..m.len() / cols).map(|r| (0..cols).map(|c| m[r * cols + c] * x[c]).sum()).collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = (ms + EPS).sqrt();
        x.iter().zip(g).map(|(v, g)| v / r * g).collect()
    };
    let rope = |x: &mut [f64], pos: usize, theta: f64| {
        let half = HEAD_DIM / 2;
        for i in 0..half {
            let angle = pos as f64 / theta.powf(2.0 * i as f64 / HEAD_DIM as f64);
            let (s, c) = angle.sin_cos();
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    };
    let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
    let emb = get("token_embd.weight");
    let scale = (HIDDEN as f32).sqrt() as f64;
    let mut xs: Vec<Vec<f64>> =
        tokens.iter().map(|&t| emb[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].iter().map(|v| v * scale).collect()).collect();
    for l in 0..LAYERS {
        let global = (l + 1) % PATTERN == 0;
        let theta = if global { THETA_GLOBAL } else { THETA_LOCAL };
        let n = |s: &str| get(&format!("blk.{l}.{s}.weight"));
        let (qn, kn) = (n("attn_q_norm"), n("attn_k_norm"));
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (pos, x) in xs.iter().enumerate() {
            let h = rms(x, &n("attn_norm"));
            let (mut q, mut k) = (mv(&n("attn_q"), &h), mv(&n("attn_k"), &h));
            for head in q.chunks_exact_mut(HEAD_DIM) {
                let normed = rms(head, &qn);
                head.copy_from_slice(&normed);
                rope(head, pos, theta);
            }
            for head in k.chunks_exact_mut(HEAD_DIM) {
                let normed = rms(head, &kn);
                head.copy_from_slice(&normed);
                rope(head, pos, theta);
            }
            qs.push(q);
            ks.push(k);
            vs.push(mv(&n("attn_v"), &h));
        }
        for i in 0..tokens.len() {
            let first = if global { 0 } else { (i + 1).saturating_sub(WINDOW) };
            let mut attn = vec![0.0; HEADS * HEAD_DIM];
            for head in 0..HEADS {
                let g = head / (HEADS / KV_HEADS);
                let q = &qs[i][head * HEAD_DIM..(head + 1) * HEAD_DIM];
                let scores: Vec<f64> = (first..=i)
                    .map(|j| q.iter().zip(&ks[j][g * HEAD_DIM..(g + 1) * HEAD_DIM]).map(|(a, b)| a * b).sum::<f64>() / (HEAD_DIM as f64).sqrt())
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (e, j) in e.iter().zip(first..=i) {
                    for d in 0..HEAD_DIM {
                        attn[head * HEAD_DIM + d] += e / z * vs[j][g * HEAD_DIM + d];
                    }
                }
            }
            let o = rms(&mv(&n("attn_output"), &attn), &n("post_attention_norm"));
            xs[i].iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            let h = rms(&xs[i], &n("ffn_norm"));
            let (gate, up) = (mv(&n("ffn_gate"), &h), mv(&n("ffn_up"), &h));
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| gelu(*g) * u).collect();
            let down = rms(&mv(&n("ffn_down"), &act), &n("post_ffw_norm"));
            xs[i].iter_mut().zip(&down).for_each(|(x, d)| *x += d);
        }
    }
    xs.iter().map(|x| mv(&emb, &rms(x, &get("output_norm.weight")))).collect()
}

// -------------------------------------------------------------------- runs

/// A cache for the model: rings of `WINDOW` positions for the local layers,
/// a full cache for the global one.
fn cache<B: Backend>(model: &Llama<B>) -> SlidingWindowCache<B> {
    let device = model.device().clone();
    SlidingWindowCache::new(model.cache_shape(), model.layer_windows(), model.device(), move |shape| {
        Ok(Box::new(FullCache::<B>::new(shape, 256, &device)?))
    })
    .expect("sliding-window cache")
}

fn logits<B: Backend>(t: burn::tensor::Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
}

/// Logits of `TOKENS` from `model`: all at once; a 3-token prefill then one
/// decode step per token; prefill chunks of 5 and 8 tokens.
fn runs<B: Backend>(model: &Llama<B>) -> Vec<(&'static str, Vec<f32>)> {
    let mut c = cache(model);
    let all = logits(model.forward(&TOKENS, &mut c, Logits::All).expect("forward"));
    // Every local layer holds its window, no more.
    for l in 0..LAYERS {
        let want = ((l + 1) % PATTERN != 0).then_some(WINDOW);
        assert_eq!(c.local_positions(l), want, "layer {l}");
    }
    let mut c = cache(model);
    let mut stepped = logits(model.forward(&TOKENS[..3], &mut c, Logits::All).expect("prefill"));
    for &t in &TOKENS[3..] {
        stepped.extend(logits(model.forward(&[t], &mut c, Logits::Last).expect("decode")));
    }
    let mut c = cache(model);
    let mut chunked = logits(model.forward(&TOKENS[..5], &mut c, Logits::All).expect("chunk 1"));
    chunked.extend(logits(model.forward(&TOKENS[5..], &mut c, Logits::All).expect("chunk 2")));
    // Accounting: 6 local layers of WINDOW positions, the global one all 13, per KV head.
    let stats = c.stats();
    assert_eq!(stats.retained_tokens, (6 * WINDOW + TOKENS.len()) * KV_HEADS);
    assert_eq!(stats.retained_bytes, stats.retained_tokens * 2 * HEAD_DIM * 4);
    assert_eq!(stats.full_bytes, LAYERS * TOKENS.len() * KV_HEADS * 2 * HEAD_DIM * 4);
    vec![("prefill", all), ("decode", stepped), ("chunks", chunked)]
}

/// Largest |got - want| and largest |want|.
fn max_err(got: &[f32], want: &[Vec<f64>]) -> (f64, f64) {
    let want: Vec<f64> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len(), "logit count");
    let err = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    (err, want.iter().fold(0.0, |m: f64, w| m.max(w.abs())))
}

fn check<B: Backend>(what: &str, model: &Llama<B>, want: &[Vec<f64>], tol: f64) {
    for (how, got) in runs(model) {
        let (err, scale) = max_err(&got, want);
        eprintln!("{what} {how}: max |logit error| {err:.3e} of scale {scale:.3}");
        assert!(err < tol, "{what} {how}: max |logit error| {err} (tolerance {tol}, scale {scale})");
    }
}

fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn gemma3_gguf_matches_the_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Default::default();
    let w = weights(11);
    let want = reference(&w, &TOKENS);
    let path = write(dir.path(), "gemma3.gguf", gemma3_gguf(&w, false));
    let (model, tok) = lava_llama::load_model::<Nd>(&path, &device).expect("load gemma3 gguf");
    let c = &model.config;
    assert_eq!((c.model_type.as_str(), c.head_dim, c.hidden_size, c.num_attention_heads), ("gemma3", HEAD_DIM, HIDDEN, HEADS));
    assert!(c.tie_word_embeddings && c.qk_norm && c.post_norms);
    let windows: Vec<Option<usize>> = (0..LAYERS).map(|l| ((l + 1) % PATTERN != 0).then_some(WINDOW)).collect();
    assert_eq!(model.layer_windows(), windows);
    check("ndarray gguf", &model, &want, 1e-4);

    // Without the sliding window the reference differs (the test can fail),
    // and a cache without windows is refused rather than computing it.
    let mut full = FullCache::<Nd>::new(model.cache_shape(), 256, &device).expect("cache");
    let err = model.forward(&TOKENS, &mut full, Logits::All).err().expect("refused").to_string();
    assert!(err.contains("sliding window of 4 tokens"), "{err}");

    // The chat format (no template in the file): Gemma's turns.
    let rendered = tok.apply_chat_template(&[
        lava_llama::Message { role: "system".into(), content: "Be brief.".into() },
        lava_llama::Message { role: "user".into(), content: "Hi".into() },
    ]);
    assert_eq!(rendered.expect("template"), "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
}

/// The flex host path: packed f32 weights within 1e-4 of the reference;
/// native Q8_0 weights within the tolerance of `tests/quantized.rs` (8% of the
/// largest logit: activations are quantized to 8 bits per block, as llama.cpp does).
#[cfg(feature = "flex")]
#[test]
fn gemma3_flex_f32_and_native_q8_0_match_the_reference() {
    use lava_llama::{load_gguf_with, WeightFormat};
    type F = lava_flex::Flex;
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Default::default();
    let w = weights(11);
    let f32_path = write(dir.path(), "f32.gguf", gemma3_gguf(&w, false));
    let want = reference(&w, &TOKENS);
    let (model, _) = load_gguf_with::<F>(&f32_path, &device, WeightFormat::F32).expect("load");
    let model = model.with_matvec_split(2);
    assert_eq!(model.weights.layers[0].self_attn.q_proj.weight.val().dims(), [0, 0], "packed on the host path");
    check("flex f32", &model, &want, 1e-4);

    let q_path = write(dir.path(), "q8.gguf", gemma3_gguf(&w, true));
    let want_q = reference(&as_stored(&w, true), &TOKENS);
    let (model, _) = load_gguf_with::<F>(&q_path, &device, WeightFormat::Native).expect("load");
    assert!(model.is_quantized());
    let scale = want_q.iter().flatten().fold(0.0, |m: f64, x| m.max(x.abs()));
    check("flex native q8_0", &model, &want_q, 0.08 * scale);
}
