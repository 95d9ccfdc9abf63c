//! The model against an independent, loop-by-loop f64 reference forward pass,
//! on tiny random-weight models (GQA group sizes 1 and 3, tied and untied
//! output, q/k/v bias on and off), plus the GGUF and Hugging Face loading paths.

use burn::tensor::backend::Backend;
use burn_ndarray::NdArray;
use lava_cache::FullCache;
use lava_llama::gguf::{GgmlType, GgufFile};
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::{config_from_gguf, GgufSource, Llama, LlamaConfig, Logits, Rope, WeightSource};

type B = NdArray<f32>;

/// Reference forward: returns logits `[T][vocab]`, f64, straight from the formulas.
fn reference(cfg: &LlamaConfig, w: &RandomWeights, tokens: &[u32]) -> Vec<Vec<f64>> {
    let get = |n: &str| -> Vec<f64> {
        let (_, v) = w.tensor(n).expect("source").expect("tensor");
        v.into_iter().map(|x| x as f64).collect()
    };
    let (d, hd, hq, hkv) = (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads);
    let ff = cfg.intermediate_size;
    let t = tokens.len();
    // y = W x + b with W [out, in] row-major.
    let mv = |wm: &[f64], x: &[f64], out: usize| -> Vec<f64> {
        (0..out).map(|o| (0..x.len()).map(|i| wm[o * x.len() + i] * x[i]).sum()).collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = (ms + cfg.rms_norm_eps).sqrt();
        x.iter().zip(g).map(|(v, g)| v / r * g).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        let half = hd / 2;
        for i in 0..half {
            let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64);
            let (s, c) = (pos as f64 * f).sin_cos();
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&id| emb[id as usize * d..(id as usize + 1) * d].to_vec()).collect();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let g1 = get(&format!("{p}.input_layernorm.weight"));
        let (wq, wk, wv, wo) = (
            get(&format!("{p}.self_attn.q_proj.weight")),
            get(&format!("{p}.self_attn.k_proj.weight")),
            get(&format!("{p}.self_attn.v_proj.weight")),
            get(&format!("{p}.self_attn.o_proj.weight")),
        );
        let bias = |n: &str, len: usize| if cfg.attention_bias { get(&format!("{p}.self_attn.{n}.bias")) } else { vec![0.0; len] };
        let (bq, bk, bv) = (bias("q_proj", hq * hd), bias("k_proj", hkv * hd), bias("v_proj", hkv * hd));
        let mut qs = vec![];
        let mut ks = vec![];
        let mut vs = vec![];
        for (pos, x) in xs.iter().enumerate() {
            let h = rms(x, &g1);
            let mut q: Vec<f64> = mv(&wq, &h, hq * hd).iter().zip(&bq).map(|(a, b)| a + b).collect();
            let mut k: Vec<f64> = mv(&wk, &h, hkv * hd).iter().zip(&bk).map(|(a, b)| a + b).collect();
            let v: Vec<f64> = mv(&wv, &h, hkv * hd).iter().zip(&bv).map(|(a, b)| a + b).collect();
            for hh in 0..hq {
                rope(&mut q[hh * hd..(hh + 1) * hd], pos);
            }
            for hh in 0..hkv {
                rope(&mut k[hh * hd..(hh + 1) * hd], pos);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let group = hq / hkv;
        for i in 0..t {
            let mut att = vec![0.0; hq * hd];
            for hh in 0..hq {
                let g = hh / group;
                let q = &qs[i][hh * hd..(hh + 1) * hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| q.iter().zip(&ks[j][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..=i {
                    for dd in 0..hd {
                        att[hh * hd + dd] += e[j] / z * vs[j][g * hd + dd];
                    }
                }
            }
            let o = mv(&wo, &att, d);
            for dd in 0..d {
                xs[i][dd] += o[dd];
            }
            let h = rms(&xs[i], &get(&format!("{p}.post_attention_layernorm.weight")));
            let gate = mv(&get(&format!("{p}.mlp.gate_proj.weight")), &h, ff);
            let up = mv(&get(&format!("{p}.mlp.up_proj.weight")), &h, ff);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = mv(&get(&format!("{p}.mlp.down_proj.weight")), &act, d);
            for dd in 0..d {
                xs[i][dd] += down[dd];
            }
        }
    }
    let gn = get("model.norm.weight");
    let out = if cfg.tie_word_embeddings { emb } else { get("lm_head.weight") };
    xs.iter().map(|x| mv(&out, &rms(x, &gn), cfg.vocab_size)).collect()
}

fn logits_all<Bk: Backend>(model: &Llama<Bk>, tokens: &[u32]) -> Vec<f32> {
    let mut cache = FullCache::new(model.cache_shape(), 256, model.device()).expect("cache");
    model.forward(tokens, &mut cache, Logits::All).expect("forward").into_data().to_vec::<f32>().expect("f32")
}

const TOKENS: [u32; 7] = [3, 17, 42, 5, 63, 0, 9];

#[test]
fn matches_reference_for_gqa_tying_and_bias() {
    let device = Default::default();
    for (heads, kv, tied, bias) in [(3, 3, true, false), (3, 1, false, false), (6, 2, true, true), (3, 1, false, true)] {
        let cfg = tiny_config(heads, kv, tied, bias);
        let w = RandomWeights { config: cfg.clone(), seed: 11 };
        let model = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model");
        let got = logits_all(&model, &TOKENS);
        let want = reference(&cfg, &w, &TOKENS);
        let mut max_err = 0f64;
        for (i, row) in want.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                max_err = max_err.max((got[i * cfg.vocab_size + j] as f64 - x).abs());
            }
        }
        assert!(max_err < 1e-4, "heads {heads}/{kv} tied {tied} bias {bias}: max error {max_err}");
    }
}

#[test]
fn token_by_token_decode_equals_prefill() {
    let device = Default::default();
    let cfg = tiny_config(6, 2, false, true);
    let w = RandomWeights { config: cfg.clone(), seed: 3 };
    let model = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model");
    let all = logits_all(&model, &TOKENS);
    let mut cache = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
    // Prefill 4 tokens, then decode the rest one at a time.
    let mut got = model.forward(&TOKENS[..4], &mut cache, Logits::All).expect("prefill").into_data().to_vec::<f32>().expect("f32");
    for &tok in &TOKENS[4..] {
        let l = model.forward(&[tok], &mut cache, Logits::Last).expect("decode");
        got.extend(l.into_data().to_vec::<f32>().expect("f32"));
    }
    assert_eq!(cache_len(&cache), TOKENS.len());
    for (a, b) in all.iter().zip(&got) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

fn cache_len(c: &FullCache<B>) -> usize {
    use lava_cache::KvCache;
    c.next_position()
}

#[test]
fn gguf_and_exported_hf_directory_match_the_source() {
    let device = Default::default();
    for bias in [false, true] {
        let cfg = tiny_config(6, 2, !bias, bias);
        let w = RandomWeights { config: cfg.clone(), seed: 5 };
        let direct = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model");
        let want = logits_all(&direct, &TOKENS);

        let dir = tempfile::tempdir().expect("tempdir");
        let gguf_path = dir.path().join("tiny.gguf");
        std::fs::write(&gguf_path, w.to_gguf(GgmlType::F32)).expect("write gguf");
        let (from_gguf, tok) = lava_llama::load_model::<B>(&gguf_path, &device).expect("load gguf");
        assert_eq!(from_gguf.config, cfg_from_file(&gguf_path));
        let got = logits_all(&from_gguf, &TOKENS);
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "gguf (bias {bias}): {err}");
        assert!(tok.vocab_size() >= 64);

        let hf_dir = dir.path().join("hf");
        lava_llama::export_gguf_to_hf(&gguf_path, &hf_dir).expect("export");
        let (from_hf, _) = lava_llama::load_model::<B>(&hf_dir, &device).expect("load hf");
        let got = logits_all(&from_hf, &TOKENS);
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "hf (bias {bias}): {err}");
    }
}

fn cfg_from_file(p: &std::path::Path) -> LlamaConfig {
    let g = GgufFile::open(p).expect("open");
    let c = config_from_gguf(&g).expect("config");
    let _ = GgufSource::new(&g, c.clone()).expect("source");
    c
}

#[test]
fn decode_batch_equals_separate_decodes() {
    use lava_cache::{CompressedCache, KvCache, PolicyConfig, PolicyName};
    let device = Default::default();
    let cfg = tiny_config(6, 2, false, true);
    let w = RandomWeights { config: cfg.clone(), seed: 5 };
    let model = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model");
    let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 60) as u32).collect();
    // Three caches at different positions and of different kinds.
    let make = || -> Vec<Box<dyn KvCache<B>>> {
        let mut full_a = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
        model.forward(&prompt, &mut full_a, Logits::Last).expect("prefill");
        let mut full_b = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
        model.forward(&prompt[..13], &mut full_b, Logits::Last).expect("prefill");
        let mut policy = PolicyConfig::new(PolicyName::Lava, 12);
        policy.window = 4;
        let mut comp = CompressedCache::new(model.cache_shape(), policy, 256, &device).expect("cache");
        model.forward(&prompt, &mut comp, Logits::Last).expect("prefill");
        vec![Box::new(full_a), Box::new(full_b), Box::new(comp)]
    };
    let tokens = [9u32, 33, 51];
    let mut separate = make();
    let mut want = Vec::new();
    for (c, &t) in separate.iter_mut().zip(&tokens) {
        want.extend(model.forward(&[t], c.as_mut(), Logits::Last).expect("decode").into_data().to_vec::<f32>().expect("f32"));
    }
    let mut batched = make();
    let mut refs: Vec<_> = batched.iter_mut().map(|c| c.as_mut()).collect();
    for step in 0..2 {
        let got = model.decode_batch(&tokens, &mut refs).expect("batch").into_data().to_vec::<f32>().expect("f32");
        if step == 0 {
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "decode_batch differs from separate decodes by {err}");
        }
    }
    // The second step advanced each cache by one more position.
    assert_eq!(refs[0].next_position(), 42);
    assert_eq!(refs[1].next_position(), 15);
    assert_eq!(refs[2].next_position(), 42);
    assert!(model.decode_batch(&tokens[..2], &mut refs).is_err());
}

#[test]
fn matvec_split_gives_the_same_logits() {
    let device = Default::default();
    let cfg = tiny_config(6, 2, false, true);
    let w = RandomWeights { config: cfg.clone(), seed: 8 };
    let one = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model");
    let split = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model").with_matvec_split(3);
    let run = |m: &Llama<B>| {
        let mut cache = FullCache::new(m.cache_shape(), 64, &device).expect("cache");
        let mut out = m.forward(&TOKENS, &mut cache, Logits::Last).expect("prefill").into_data().to_vec::<f32>().expect("f32");
        for &t in &[4u32, 8, 15] {
            out.extend(m.forward(&[t], &mut cache, Logits::Last).expect("decode").into_data().to_vec::<f32>().expect("f32"));
        }
        out
    };
    let (a, b) = (run(&one), run(&split));
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "split projections differ by {err}");
}

/// Decode on flex runs on the weights' storage (`Llama::decode_batch`'s host
/// path, packed weights): token-by-token logits against the f64
/// reference, for every layout the generic path is checked on, and a batched
/// step over caches of different lengths against separate steps. Needs the
/// `flex` feature (on in the workspace build).
#[cfg(feature = "flex")]
#[test]
fn flex_host_decode_matches_reference_and_batches() {
    type F = lava_flex::Flex;
    let device = Default::default();
    for (heads, kv, tied, bias) in [(3, 3, true, false), (3, 1, false, false), (6, 2, true, true), (3, 1, false, true)] {
        let cfg = tiny_config(heads, kv, tied, bias);
        let w = RandomWeights { config: cfg.clone(), seed: 11 };
        let model = Llama::<F>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model").with_matvec_split(2);
        // The matrices run packed (`crate::packed`): the f32 ones are empty, and the
        // parameter bytes count the packed ones (at least the embedding and q/k/v).
        let q = model.weights.layers[0].self_attn.q_proj.weight.val();
        assert_eq!(q.dims(), [0, 0], "heads {heads}/{kv}: the flex model's projections are packed");
        let qkv = cfg.num_hidden_layers * cfg.hidden_size * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim;
        assert!(model.parameter_bytes() >= 4 * (qkv + cfg.vocab_size * cfg.hidden_size), "heads {heads}/{kv}: packed bytes counted");
        let want = reference(&cfg, &w, &TOKENS);
        // A 21-token prompt: many rows in each packed gemm pass.
        let long = TOKENS.repeat(3);
        let all = logits_all(&model, &long);
        let want_long = reference(&cfg, &w, &long);
        let err = want_long.iter().flatten().zip(&all).map(|(&b, &a)| (a as f64 - b).abs()).fold(0f64, f64::max);
        assert!(err < 1e-4, "heads {heads}/{kv} tied {tied} bias {bias}: host prefill max error {err}");
        let mut cache = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
        model.forward(&TOKENS[..2], &mut cache, Logits::Last).expect("prefill");
        for (i, &tok) in TOKENS.iter().enumerate().skip(2) {
            let got = model.forward(&[tok], &mut cache, Logits::Last).expect("decode").into_data().to_vec::<f32>().expect("f32");
            let err = got.iter().zip(&want[i]).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
            assert!(err < 1e-4, "heads {heads}/{kv} tied {tied} bias {bias} position {i}: max error {err}");
        }
    }

    // A prompt longer than the host MLP's row block (1024 rows): the blocks
    // together equal the reference.
    let mut cfg = tiny_config(6, 2, true, false);
    cfg.max_position_embeddings = 2048;
    let w = RandomWeights { config: cfg.clone(), seed: 3 };
    let model = Llama::<F>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model").with_matvec_split(2);
    let long: Vec<u32> = (0..1100u32).map(|i| (i * 37 + 11) % 64).collect();
    let want = reference(&cfg, &w, &long);
    let mut cache = FullCache::new(model.cache_shape(), 2048, &device).expect("cache");
    let all = model.forward(&long, &mut cache, Logits::All).expect("forward").into_data().to_vec::<f32>().expect("f32");
    let err = want.iter().flatten().zip(&all).map(|(&b, &a)| (a as f64 - b).abs()).fold(0f64, f64::max);
    assert!(err < 1e-4, "1100-token host prefill: max error {err}");

    let cfg = tiny_config(6, 2, false, true);
    let w = RandomWeights { config: cfg.clone(), seed: 5 };
    let model = Llama::<F>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model").with_matvec_split(2);
    let caches = || -> Vec<FullCache<F>> {
        [40, 13, 1]
            .iter()
            .map(|&len| {
                let mut c = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
                model.forward(&TOKENS.repeat(6)[..len], &mut c, Logits::Last).expect("prefill");
                c
            })
            .collect()
    };
    let tokens = [9u32, 33, 51];
    let mut separate = caches();
    let want: Vec<f32> = separate
        .iter_mut()
        .zip(&tokens)
        .flat_map(|(c, &t)| model.forward(&[t], c, Logits::Last).expect("decode").into_data().to_vec::<f32>().expect("f32"))
        .collect();
    let mut batched = caches();
    let mut refs: Vec<&mut FullCache<F>> = batched.iter_mut().collect();
    let got = model.decode_batch(&tokens, &mut refs).expect("batch").into_data().to_vec::<f32>().expect("f32");
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "batched host decode differs from separate decodes by {err}");
}

/// `Llama::forward_runs` (a prefill chunk and decode tokens in one step)
/// against each run alone through `forward`: on ndarray (the generic path:
/// the 1-token runs batched, the others alone) within float tolerance, and
/// with the `flex` feature on the host path bit for bit (the step's rows stay
/// within `exact_batch_rows`). Caches of different kinds and lengths, a
/// compressed cache taking chunks, two steps in a row.
fn forward_runs_matches_runs_alone<Bk: Backend>(exact: bool) {
    use lava_cache::{CompressedCache, KvCache, PolicyConfig, PolicyName};
    let device = Default::default();
    let cfg = tiny_config(6, 2, false, true);
    let w = RandomWeights { config: cfg.clone(), seed: 9 };
    let model = Llama::<Bk>::from_source(cfg.clone(), &w, Rope::new(&cfg), &device).expect("model").with_matvec_split(2);
    let prompt: Vec<u32> = (0..60).map(|i| (i * 11 % 60) as u32).collect();
    let make = || -> Vec<Box<dyn KvCache<Bk>>> {
        let mut policy = PolicyConfig::new(PolicyName::Lava, 12);
        policy.window = 4;
        let mut chunked = CompressedCache::new(model.cache_shape(), policy.clone(), 256, &device).expect("cache").with_chunked_prefill(true);
        model.forward(&prompt[..20], &mut chunked, Logits::Last).expect("prefill");
        let mut full = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
        model.forward(&prompt[..13], &mut full, Logits::Last).expect("prefill");
        let fresh = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
        let mut comp = CompressedCache::new(model.cache_shape(), policy, 256, &device).expect("cache");
        model.forward(&prompt, &mut comp, Logits::Last).expect("prefill");
        vec![Box::new(chunked), Box::new(full), Box::new(fresh), Box::new(comp)]
    };
    let steps: [[&[u32]; 4]; 2] = [[&prompt[20..29], &[33], &prompt[..5], &[51]], [&prompt[29..40], &[7], &[2], &[44]]];
    let mut alone = make();
    let mut want: Vec<Vec<f32>> = Vec::new();
    for runs in &steps {
        for (c, run) in alone.iter_mut().zip(runs) {
            want.push(model.forward(run, c.as_mut(), Logits::Last).expect("alone").into_data().to_vec::<f32>().expect("f32"));
        }
    }
    let mut together = make();
    let mut refs: Vec<&mut dyn KvCache<Bk>> = together.iter_mut().map(|c| c.as_mut()).collect();
    let mut got: Vec<Vec<f32>> = Vec::new();
    for runs in &steps {
        let logits = model.forward_runs(runs, &mut refs).expect("runs").into_data().to_vec::<f32>().expect("f32");
        got.extend(logits.chunks(cfg.vocab_size).map(|r| r.to_vec()));
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if exact {
            assert_eq!(g, w, "run {i}: forward_runs differs from the run alone");
        } else {
            let err = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "run {i}: forward_runs differs from the run alone by {err}");
        }
    }
    for (a, b) in alone.iter().zip(&refs) {
        assert_eq!(a.next_position(), b.next_position());
    }
    assert!(model.forward_runs(&[&[1u32][..], &[][..], &[2], &[3]], &mut refs).is_err(), "an empty run is refused");
    assert!(model.forward_runs(&[&[1u32][..]], &mut refs).is_err(), "one run per cache");
}

#[test]
fn forward_runs_equals_each_run_alone() {
    forward_runs_matches_runs_alone::<B>(false);
    #[cfg(feature = "flex")]
    {
        let model_rows = {
            let cfg = tiny_config(6, 2, false, true);
            let w = RandomWeights { config: cfg.clone(), seed: 9 };
            Llama::<lava_flex::Flex>::from_source(cfg.clone(), &w, Rope::new(&cfg), &Default::default()).expect("model").exact_batch_rows()
        };
        assert!(model_rows >= 32, "the flex host path batches exactly ({model_rows} rows)");
        forward_runs_matches_runs_alone::<lava_flex::Flex>(true);
    }
}
