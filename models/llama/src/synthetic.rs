//! Synthetic models: a real model file's tensor shapes, block formats and
//! architecture metadata, with seeded random weights generated in memory.
//!
//! They exist to measure speed where the real file cannot go (a lent GPU
//! machine reaches no network, and only 64 MiB travel to it): the same shapes
//! in the same formats run the same kernels, so a synthetic model decodes at
//! the real one's speed, while its text is noise. `lava bench` and `lava
//! generate` take them as `--model synthetic:NAME`. Each shape names the
//! known model it copies; the root package's test `tests/synthetic.rs` checks
//! every shape's tensor table and metadata against the real file.
//!
//! The tokenizer is byte-level BPE with no merges: the 256 byte tokens, then
//! filler tokens up to the real vocabulary size, so a text of `n` ASCII bytes
//! is `n` tokens.

use crate::config::LlamaConfig;
use crate::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use crate::tiny::gguf_name;
use crate::weights::parameters;

/// The block formats of a file's matrices, by role (the vectors are F32).
#[derive(Debug, Clone, Copy)]
pub struct Formats {
    /// `token_embd.weight`.
    pub embedding: GgmlType,
    /// `output.weight`; `None` for a model whose output head is the embedding.
    pub output: Option<GgmlType>,
    /// `attn_q`, `attn_k`, `attn_output`.
    pub attention: GgmlType,
    /// `ffn_gate`, `ffn_up`.
    pub feed_forward: GgmlType,
    /// `attn_v`: on most layers, and on the [`more_bits`](Self::more_bits) ones.
    pub value: (GgmlType, GgmlType),
    /// `ffn_down`: on most layers, and on the [`more_bits`](Self::more_bits) ones.
    pub down: (GgmlType, GgmlType),
    /// The layers whose `attn_v` and `ffn_down` take their second format (the quantizer's
    /// "more bits" layers, as read off the real file).
    pub more_bits: &'static [usize],
}

/// A synthetic model's shape: the real file's architecture, sizes and formats.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticShape {
    /// The name after `synthetic:`, the known model's name.
    pub name: &'static str,
    /// What it copies.
    pub copies: &'static str,
    /// GGUF `general.architecture`.
    pub arch: &'static str,
    /// Decoder layers.
    pub layers: usize,
    /// Model width.
    pub hidden: usize,
    /// Feed-forward width.
    pub feed_forward: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length.
    pub context: usize,
    /// RoPE base.
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Q/K/V biases (Qwen2).
    pub bias: bool,
    /// The matrices' block formats.
    pub formats: Formats,
}

/// The synthetic shapes: the known models', and `tiny` (4 layers of width 256,
/// Q8_0, for correctness checks across backends in seconds).
pub const SYNTHETIC: [SyntheticShape; 4] = [
    SyntheticShape {
        name: "qwen2.5-coder-0.5b",
        copies: "Qwen2.5-Coder-0.5B-Instruct (Q5_0/Q8_0 mix)",
        arch: "qwen2",
        layers: 24,
        hidden: 896,
        feed_forward: 4864,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        vocab: 151_936,
        context: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        bias: true,
        formats: Formats {
            embedding: GgmlType::Q5_0,
            output: Some(GgmlType::Q8_0),
            attention: GgmlType::Q5_0,
            feed_forward: GgmlType::Q5_0,
            value: (GgmlType::Q5_0, GgmlType::Q8_0),
            down: (GgmlType::Known(lava_quant::GgmlType::Q4_K), GgmlType::Known(lava_quant::GgmlType::Q6_K)),
            more_bits: &[0, 1, 3, 6, 7, 8, 9, 10, 13, 16, 19, 21],
        },
    },
    SyntheticShape {
        name: "qwen2.5-coder-1.5b",
        copies: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        arch: "qwen2",
        layers: 28,
        hidden: 1536,
        feed_forward: 8960,
        heads: 12,
        kv_heads: 2,
        head_dim: 128,
        vocab: 151_936,
        context: 32_768,
        rope_base: 1_000_000.0,
        eps: 1e-6,
        bias: true,
        formats: Formats {
            embedding: GgmlType::Known(lava_quant::GgmlType::Q4_K),
            output: Some(GgmlType::Known(lava_quant::GgmlType::Q6_K)),
            attention: GgmlType::Known(lava_quant::GgmlType::Q4_K),
            feed_forward: GgmlType::Known(lava_quant::GgmlType::Q4_K),
            value: (GgmlType::Known(lava_quant::GgmlType::Q4_K), GgmlType::Known(lava_quant::GgmlType::Q6_K)),
            down: (GgmlType::Known(lava_quant::GgmlType::Q4_K), GgmlType::Known(lava_quant::GgmlType::Q6_K)),
            more_bits: &[0, 1, 5, 6, 7, 8, 9, 10, 13, 16, 19, 21, 24, 27],
        },
    },
    SyntheticShape {
        name: "smollm2-135m",
        copies: "SmolLM2-135M-Instruct Q4_1",
        arch: "llama",
        layers: 30,
        hidden: 576,
        feed_forward: 1536,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        vocab: 49_152,
        context: 8192,
        rope_base: 100_000.0,
        eps: 1e-5,
        bias: false,
        formats: Formats {
            embedding: GgmlType::Q8_0,
            output: None,
            attention: GgmlType::Q4_1,
            feed_forward: GgmlType::Q4_1,
            value: (GgmlType::Q4_1, GgmlType::Q4_1),
            down: (GgmlType::Q4_1, GgmlType::Q4_1),
            more_bits: &[],
        },
    },
    SyntheticShape {
        name: "tiny",
        copies: "no file: 4 layers of width 256, 8 query and 2 KV heads of 32, Q8_0",
        arch: "llama",
        layers: 4,
        hidden: 256,
        feed_forward: 512,
        heads: 8,
        kv_heads: 2,
        head_dim: 32,
        vocab: 512,
        context: 4096,
        rope_base: 10_000.0,
        eps: 1e-5,
        bias: false,
        formats: Formats {
            embedding: GgmlType::Q8_0,
            output: None,
            attention: GgmlType::Q8_0,
            feed_forward: GgmlType::Q8_0,
            value: (GgmlType::Q8_0, GgmlType::Q8_0),
            down: (GgmlType::Q8_0, GgmlType::Q8_0),
            more_bits: &[],
        },
    },
];

/// The synthetic shape called `name`.
pub fn synthetic_shape(name: &str) -> Option<&'static SyntheticShape> {
    SYNTHETIC.iter().find(|s| s.name == name)
}

/// The names of the synthetic shapes, comma-separated (for error messages).
pub fn synthetic_names() -> String {
    SYNTHETIC.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

impl SyntheticShape {
    /// The model configuration this shape implies.
    pub fn config(&self) -> LlamaConfig {
        LlamaConfig {
            model_type: if self.arch == "llama" { "llama".into() } else { self.arch.into() },
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            intermediate_size: self.feed_forward,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            head_dim: self.head_dim,
            rms_norm_eps: self.eps,
            rope_theta: self.rope_base,
            rope_scaling: None,
            max_position_embeddings: self.context,
            tie_word_embeddings: self.formats.output.is_none(),
            attention_bias: self.bias,
            qk_norm: self.arch == "qwen3",
            bos_token_id: None,
            eos_token_ids: vec![],
            sliding_window: None,
            ..LlamaConfig::default_extras()
        }
    }

    /// The GGUF tensor type of tensor `gguf` (a GGUF name) of layer `layer`.
    pub fn format(&self, gguf: &str, layer: Option<usize>) -> GgmlType {
        let f = &self.formats;
        let role = gguf.rsplit('.').nth(1).unwrap_or("");
        if gguf.ends_with(".bias") || role.ends_with("norm") {
            return GgmlType::F32;
        }
        let more = layer.is_some_and(|l| f.more_bits.contains(&l));
        match role {
            "token_embd" => f.embedding,
            "output" => f.output.unwrap_or(f.embedding),
            "attn_v" if more => f.value.1,
            "attn_v" => f.value.0,
            "ffn_down" if more => f.down.1,
            "ffn_down" => f.down.0,
            "ffn_gate" | "ffn_up" => f.feed_forward,
            _ => f.attention,
        }
    }

    /// The GGUF image of this shape with weights drawn from `seed`: the
    /// metadata a loader reads, a byte-level tokenizer of the real vocabulary
    /// size, and every tensor in its format, filled with random blocks whose
    /// scales are finite and small (weights of about +-0.05; norms near 1).
    pub fn gguf_image(&self, seed: u64) -> Vec<u8> {
        let c = self.config();
        let mut w = GgufWriter::new();
        let arch = self.arch;
        w.kv("general.architecture", Value::Str(arch.into()));
        w.kv("general.name", Value::Str(format!("synthetic:{} (random weights in the shape of {})", self.name, self.copies)));
        crate::tiny::write_sizes(&mut w, arch, &c);
        w.kv("tokenizer.ggml.model", Value::Str("gpt2".into()));
        w.kv("tokenizer.ggml.pre", Value::Str("gpt2".into()));
        let tokens = (0..self.vocab).map(|i| Value::Str(if i < 256 { byte_token(i as u8) } else { format!("[synthetic {i}]") }));
        w.kv("tokenizer.ggml.tokens", Value::Array(tokens.collect()));
        w.kv("tokenizer.ggml.merges", Value::Array(vec![]));
        for p in parameters(&c) {
            let name = gguf_name(&p.name);
            // Every parameter's rows are whole blocks in these shapes (checked by the tests).
            w.tensor_sized(&name, &p.shape, self.format(&name, p.layer))
                .unwrap_or_else(|| panic!("synthetic {}: {name} {:?} is not whole blocks", self.name, p.shape));
        }
        w.to_bytes_filled(|name, kind, bytes| fill(name, kind, bytes, seed))
    }

    /// [`gguf_image`](Self::gguf_image), parsed.
    pub fn gguf(&self, seed: u64) -> Result<GgufFile, crate::ModelError> {
        Ok(GgufFile::from_bytes(format!("synthetic:{}", self.name), self.gguf_image(seed))?)
    }
}

/// The GPT-2 byte-level alphabet's token for byte `b`.
fn byte_token(b: u8) -> String {
    // GPT-2 maps the printable Latin-1 bytes to themselves and the rest to U+0100 upwards.
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b).to_string();
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + shift).map_or_else(|| "?".into(), String::from)
}

/// Random contents for tensor `name` in `kind`: random bytes, then each block's
/// f16 scales (and minimums) set to small finite values; F32/F16 tensors get
/// values directly (norm gains near 1, everything else within +-0.05).
fn fill(name: &str, kind: GgmlType, bytes: &mut [u8], seed: u64) {
    use lava_quant::GgmlType as Q;
    let mut rng = Rng::new(name, seed);
    let norm = name.ends_with("norm.weight");
    let value = |rng: &mut Rng| if norm { 0.9 + 0.2 * rng.unit() } else { 0.05 * (2.0 * rng.unit() - 1.0) };
    let Some(q) = kind.quant() else { return };
    match q {
        Q::F32 => bytes.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&(value(&mut rng) as f32).to_le_bytes())),
        Q::F16 => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::f16::from_f64(value(&mut rng)).to_le_bytes())),
        Q::BF16 => bytes.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&half::bf16::from_f64(value(&mut rng)).to_le_bytes())),
        _ => {
            rng.fill(bytes);
            // (byte offset of an f16 scale in the block, its size): the sizes make a weight
            // of about 0.05 at the quants' typical magnitude.
            let scales: &[(usize, f64)] = match q {
                Q::Q4_0 => &[(0, 6e-3)],
                Q::Q4_1 => &[(0, 6e-3), (2, -0.04)],
                Q::Q5_0 => &[(0, 3e-3)],
                Q::Q5_1 => &[(0, 3e-3), (2, -0.04)],
                Q::Q8_0 => &[(0, 4e-4)],
                Q::Q2_K => &[(80, 2e-3), (82, 1e-3)],
                Q::Q3_K => &[(108, 2e-3)],
                Q::Q4_K => &[(0, 2e-4), (2, 1e-4)],
                Q::Q5_K => &[(0, 1e-4), (2, 1e-4)],
                Q::Q6_K => &[(208, 3e-5)],
                Q::F32 | Q::F16 | Q::BF16 => &[],
            };
            for block in bytes.chunks_exact_mut(q.block_bytes()) {
                for &(at, size) in scales {
                    let v = half::f16::from_f64(size * (0.5 + rng.unit()));
                    block[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

/// xorshift64*, seeded from a tensor's name and the model seed.
struct Rng(u64);

impl Rng {
    fn new(name: &str, seed: u64) -> Self {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(h | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn fill(&mut self, bytes: &mut [u8]) {
        let mut chunks = bytes.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_builds_a_loadable_image_with_finite_weights() {
        // The tiny one end to end (the big ones are checked against the real files by
        // the root package's tests/synthetic.rs).
        let s = synthetic_shape("tiny").unwrap();
        let g = s.gguf(7).unwrap();
        let cfg = crate::config_from_gguf(&g).unwrap();
        assert_eq!(cfg.num_hidden_layers, 4);
        assert_eq!(cfg.vocab_size, 512);
        for name in &g.tensor_order {
            let v = g.dequantize(name).unwrap();
            assert!(!v.is_empty(), "{name}");
            assert!(v.iter().all(|x| x.is_finite() && x.abs() < 0.5 || name.ends_with("norm.weight")), "{name}");
        }
        // The same seed gives the same bytes; another seed others.
        assert_eq!(s.gguf_image(7), s.gguf_image(7));
        assert_ne!(s.gguf_image(7), s.gguf_image(8));
    }

    #[test]
    fn the_tokenizer_is_bytes() {
        let g = synthetic_shape("tiny").unwrap().gguf(0).unwrap();
        let t = crate::Tokenizer::from_gguf(&g).unwrap();
        let ids = t.encode("Hello, world! é").unwrap();
        assert_eq!(ids.len(), "Hello, world! é".len());
        assert_eq!(t.decode(&ids).unwrap(), "Hello, world! é");
    }

    #[test]
    fn quantized_scales_give_small_weights() {
        use lava_quant::GgmlType as Q;
        for q in [Q::Q4_0, Q::Q4_1, Q::Q5_0, Q::Q5_1, Q::Q8_0, Q::Q2_K, Q::Q3_K, Q::Q4_K, Q::Q5_K, Q::Q6_K] {
            let mut bytes = vec![0u8; q.block_bytes() * 16];
            fill("blk.0.attn_q.weight", GgmlType::Known(q), &mut bytes, 1);
            let v = lava_quant::dequantize_to_vec(q, &bytes).unwrap();
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            assert!(max.is_finite() && max < 0.6 && rms > 0.005 && rms < 0.2, "{q}: max {max} rms {rms}");
        }
    }
}
