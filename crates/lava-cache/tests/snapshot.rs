//! Snapshots: a cache restored from its snapshot file goes on exactly as the
//! original (bit for bit, for every cache kind and KV dtype the backend
//! stores), and every damaged or foreign file is refused before use.

mod common;

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use common::{random_values, tensor3, to_vec3, Rng, B};
use lava_cache::{
    CacheError, CacheShape, CacheSnapshot, CompressedCache, FullCache, KvCache, KvDtype, PolicyConfig, PolicyName, SlidingWindowCache,
};

const SHAPE: CacheShape = CacheShape { layers: 4, query_heads: 4, kv_heads: 2, head_dim: 32 };

/// One forward pass's inputs: per layer `q [H_q, t, D]`, `k`, `v [H_kv, t, D]`.
type Step = Vec<(Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>)>;

fn step(rng: &mut Rng, t: usize) -> Step {
    let (hq, hkv, d) = (SHAPE.query_heads, SHAPE.kv_heads, SHAPE.head_dim);
    (0..SHAPE.layers)
        .map(|_| {
            (
                tensor3(random_values(rng, hq * t * d, 1.0), [hq, t, d]),
                tensor3(random_values(rng, hkv * t * d, 1.0), [hkv, t, d]),
                tensor3(random_values(rng, hkv * t * d, 1.0), [hkv, t, d]),
            )
        })
        .collect()
}

fn run(cache: &mut dyn KvCache<B>, s: &Step) -> Vec<Vec<f32>> {
    s.iter().enumerate().map(|(l, (q, k, v))| to_vec3(cache.attend(l, q.clone(), k.clone(), v.clone()).expect("attend"))).collect()
}

fn policy(name: PolicyName, budget: usize) -> PolicyConfig {
    let mut c = PolicyConfig::new(name, budget);
    c.window = 4;
    c.kernel_size = 3;
    c
}

fn compressed(config: PolicyConfig, dtype: KvDtype, slack: Option<usize>) -> Box<dyn KvCache<B>> {
    compressed_chunked(config, dtype, slack, false)
}

fn compressed_chunked(config: PolicyConfig, dtype: KvDtype, slack: Option<usize>, chunked: bool) -> Box<dyn KvCache<B>> {
    let mut c = CompressedCache::<B>::new(SHAPE, config, 512, &common::device())
        .expect("cache")
        .with_kv_dtype(dtype)
        .expect("dtype")
        .with_chunked_prefill(chunked);
    if let Some(s) = slack {
        c = c.with_decode_budget(s);
    }
    Box::new(c)
}

fn full(dtype: KvDtype) -> Box<dyn KvCache<B>> {
    Box::new(FullCache::<B>::new(SHAPE, 512, &common::device()).expect("cache").with_kv_dtype(dtype).expect("dtype"))
}

fn sliding() -> Box<dyn KvCache<B>> {
    let windows = vec![Some(8), None, Some(8), None];
    let c = SlidingWindowCache::<B>::new(SHAPE, windows, &common::device(), |shape| {
        Ok(Box::new(CompressedCache::<B>::new(shape, policy(PolicyName::Lava, 16), 512, &common::device())?) as Box<dyn KvCache<B>>)
    })
    .expect("cache");
    Box::new(c)
}

fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([("model_sha256".to_string(), "ab".repeat(32)), ("tokens".to_string(), "[1,2,3]".to_string())])
}

/// Prefills a cache, snapshots it through a file image, restores a fresh
/// one, then runs the same question chunk and decode steps on both.
fn round_trip(name: &str, make: impl Fn() -> Box<dyn KvCache<B>>) {
    let mut rng = Rng::new(7);
    let prompt = step(&mut rng, 48);
    let question = step(&mut rng, 5);
    let decode: Vec<Step> = (0..12).map(|_| step(&mut rng, 1)).collect();

    let mut a = make();
    // The prompt in two chunks (the second matters to chunked prefill).
    let (first, second): (Step, Step) = prompt
        .iter()
        .map(|(q, k, v)| {
            let cut = |x: &Tensor<B, 3>, a: usize, b: usize| {
                let [h, _, d] = x.dims();
                x.clone().slice([0..h, a..b, 0..d])
            };
            ((cut(q, 0, 30), cut(k, 0, 30), cut(v, 0, 30)), (cut(q, 30, 48), cut(k, 30, 48), cut(v, 30, 48)))
        })
        .unzip();
    run(a.as_mut(), &first);
    run(a.as_mut(), &second);
    let snap = a.snapshot().unwrap_or_else(|e| panic!("{name}: snapshot: {e}"));
    let bytes = snap.to_bytes(&meta()).expect("to_bytes");
    let (read, read_meta) = CacheSnapshot::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: from_bytes: {e}"));
    assert_eq!(read, snap, "{name}: the file image reads back as written");
    assert_eq!(read_meta, meta(), "{name}: metadata");
    assert!(read.to_bytes(&meta()).expect("again") == bytes, "{name}: the same snapshot is always the same bytes");

    let mut b = make();
    b.restore(&read).unwrap_or_else(|e| panic!("{name}: restore: {e}"));
    assert_eq!(b.next_position(), a.next_position(), "{name}");
    assert_eq!(b.stats().retained_tokens, a.stats().retained_tokens, "{name}");
    assert_eq!(b.stats().retained_bytes, a.stats().retained_bytes, "{name}");
    for (i, s) in std::iter::once(&question).chain(&decode).enumerate() {
        assert_eq!(run(a.as_mut(), s), run(b.as_mut(), s), "{name}: step {i} differs after the restore");
    }
    assert_eq!(a.snapshot().expect("a"), b.snapshot().expect("b"), "{name}: the two caches end holding the same");
}

#[test]
fn every_cache_kind_goes_on_exactly_after_a_restore() {
    round_trip("full f32", || full(KvDtype::F32));
    round_trip("full q8_0", || full(KvDtype::Q8_0));
    round_trip("lava f32", || compressed(policy(PolicyName::Lava, 16), KvDtype::F32, None));
    round_trip("snapkv q8_0", || compressed(policy(PolicyName::SnapKv, 16), KvDtype::Q8_0, None));
    round_trip("cake f32", || compressed(policy(PolicyName::Cake, 16), KvDtype::F32, None));
    // Decode-time eviction re-scores with the restored query window.
    round_trip("ada-snapkv, decode slack 3", || compressed(policy(PolicyName::AdaSnapKv, 16), KvDtype::F32, Some(3)));
    round_trip("lava q8_0, decode slack 2", || compressed(policy(PolicyName::Lava, 12), KvDtype::Q8_0, Some(2)));
    round_trip("sliding windows + lava", sliding);
    // Chunked prefill: the rankings carried over to the question's chunk.
    round_trip("lava, chunked prefill", || compressed_chunked(policy(PolicyName::Lava, 16), KvDtype::F32, None, true));
    round_trip("cake, chunked prefill + decode slack 4", || compressed_chunked(policy(PolicyName::Cake, 16), KvDtype::Q8_0, Some(4), true));
}

fn lava_snapshot() -> CacheSnapshot {
    let mut rng = Rng::new(11);
    let mut c = compressed(policy(PolicyName::Lava, 16), KvDtype::F32, None);
    run(c.as_mut(), &step(&mut rng, 40));
    c.snapshot().expect("snapshot")
}

fn refused(bytes: &[u8]) -> String {
    match CacheSnapshot::from_bytes(bytes) {
        Err(CacheError::Snapshot(msg)) => msg,
        Err(other) => panic!("refused with the wrong error: {other}"),
        Ok(_) => panic!("a bad snapshot file was accepted"),
    }
}

/// `bytes` with its JSON header's metadata entry `key` set to `value`.
fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    let mut text = serde_json::to_vec(&header).expect("json");
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    out
}

#[test]
fn damaged_and_foreign_files_are_refused() {
    let snap = lava_snapshot();
    let bytes = snap.to_bytes(&meta()).expect("bytes");
    // Truncated anywhere.
    for cut in [0, 5, 8, 16, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let msg = refused(&bytes[..cut]);
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
    // A flipped bit in the tensor data or in the header.
    let mut flipped = bytes.clone();
    *flipped.last_mut().expect("data") ^= 0x10;
    assert!(refused(&flipped).contains("corrupted"));
    let text = String::from_utf8_lossy(&bytes[8..]).into_owned();
    let at = 8 + text.find("\\\"appended\\\":").expect("appended in the header") + 13;
    let mut flipped = bytes.clone();
    flipped[at] = if flipped[at] == b'1' { b'2' } else { b'1' };
    refused(&flipped);
    // Another format, another version, no checksum.
    assert!(refused(&with_metadata(&bytes, "format", "gguf-kv")).contains("not a lava KV snapshot"));
    assert!(refused(&with_metadata(&bytes, "version", "2")).contains("version 2"));
    let plain = safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), None).expect("empty file");
    assert!(refused(&plain).contains("not a lava KV snapshot"));
    // Intact, but its contents disagree with its header.
    let mut bad = snap.clone();
    bad.layers[1].slots[0].1 = bad.layers[1].appended + 3;
    assert!(refused(&bad.to_bytes(&meta()).expect("bytes")).contains("outside"));
    let mut bad = snap.clone();
    bad.layers[2].slots[1] = bad.layers[2].slots[0];
    assert!(refused(&bad.to_bytes(&meta()).expect("bytes")).contains("twice"));
    // Intact and consistent, but holding a NaN or an infinity (the fuzzer forged such a file,
    // checksum included): a cache never holds one, and one read back would poison attention.
    let mut bad = snap.clone();
    if let lava_cache::StoredRows::F32(k) = &mut bad.layers[0].keys {
        k[3] = f32::NAN;
    }
    assert!(refused(&bad.to_bytes(&meta()).expect("bytes")).contains("not a finite number"));
    let mut chunked = compressed_chunked(policy(PolicyName::Lava, 16), KvDtype::F32, None, true);
    run(chunked.as_mut(), &step(&mut Rng::new(12), 40));
    let mut bad = chunked.snapshot().expect("snapshot");
    let (_, q) = bad.layers.iter_mut().find_map(|l| l.queries.as_mut()).expect("a chunked cache keeps its window's queries");
    q[0] = f32::INFINITY;
    assert!(refused(&bad.to_bytes(&meta()).expect("bytes")).contains("queries holds a value that is not a finite number"));
    // The snapshot's own metadata names are not the caller's.
    let reserved = BTreeMap::from([("sha256".to_string(), "x".to_string())]);
    assert!(matches!(snap.to_bytes(&reserved), Err(CacheError::Snapshot(_))));
}

#[test]
fn a_snapshot_goes_only_into_an_empty_cache_of_the_same_kind() {
    let snap = lava_snapshot();
    let restore = |mut c: Box<dyn KvCache<B>>| match c.restore(&snap) {
        Err(CacheError::Snapshot(msg)) => {
            assert_eq!(c.next_position(), 0, "a refused restore leaves the cache empty");
            msg
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(()) => panic!("restored into a cache of another kind"),
    };
    assert!(restore(compressed(policy(PolicyName::Lava, 32), KvDtype::F32, None)).contains("same policy"));
    assert!(restore(compressed(policy(PolicyName::SnapKv, 16), KvDtype::F32, None)).contains("same policy"));
    assert!(restore(compressed(policy(PolicyName::Lava, 16), KvDtype::Q8_0, None)).contains("--kv-dtype f32"));
    assert!(restore(compressed(policy(PolicyName::Lava, 16), KvDtype::F32, Some(4))).contains("--decode-budget"));
    assert!(restore(full(KvDtype::F32)).contains("not a full one"));
    let other_model = CacheShape { layers: 5, ..SHAPE };
    let c = CompressedCache::<B>::new(other_model, policy(PolicyName::Lava, 16), 512, &common::device()).expect("cache");
    assert!(restore(Box::new(c)).contains("another model"));
    assert!(restore(compressed_chunked(policy(PolicyName::Lava, 16), KvDtype::F32, None, true)).contains("chunked prefill off"));
    // Too short for what the snapshot holds.
    let mut small = CompressedCache::<B>::new(SHAPE, policy(PolicyName::Lava, 16), 16, &common::device()).expect("cache");
    assert!(matches!(small.restore(&snap), Err(CacheError::CapacityExceeded { .. })));
    assert_eq!(small.next_position(), 0);
    // Not empty.
    let mut used = compressed(policy(PolicyName::Lava, 16), KvDtype::F32, None);
    run(used.as_mut(), &step(&mut Rng::new(3), 8));
    assert!(matches!(used.restore(&snap), Err(CacheError::Snapshot(m)) if m.contains("empty cache")));
}

#[test]
fn files_are_written_atomically_and_errors_name_them() {
    let dir = std::env::temp_dir().join(format!("lava-snapshot-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("doc.lvc");
    let snap = lava_snapshot();
    snap.save(&path, &meta()).expect("save");
    let (read, m) = CacheSnapshot::load(&path).expect("load");
    assert_eq!((read, m), (snap.clone(), meta()));
    let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(leftovers.len(), 1, "only the snapshot, no temporary file: {leftovers:?}");
    // A write that cannot happen leaves nothing behind.
    let missing_dir = dir.join("no-such-dir").join("doc.lvc");
    assert!(matches!(snap.save(&missing_dir, &meta()), Err(CacheError::Snapshot(m)) if m.contains("no-such-dir")));
    // Errors name the file.
    std::fs::write(dir.join("half.lvc"), &std::fs::read(&path).expect("read")[..100]).expect("write");
    assert!(matches!(CacheSnapshot::load(&dir.join("half.lvc")), Err(CacheError::Snapshot(m)) if m.contains("half.lvc") && m.contains("truncated")));
    assert!(matches!(CacheSnapshot::load(&dir.join("absent.lvc")), Err(CacheError::Snapshot(m)) if m.contains("absent.lvc")));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A bounded, deterministic mutation loop over a valid image (the
/// `kv_snapshot` fuzz target explores further): the reader never panics,
/// and every mutated image is refused (the checksum covers every byte that
/// carries meaning).
#[test]
fn mutated_images_never_panic_and_are_refused() {
    let bytes = lava_snapshot().to_bytes(&meta()).expect("bytes");
    let mut rng = Rng::new(99);
    for i in 0..3000 {
        let mut m = bytes.clone();
        match i % 4 {
            0 => {
                let at = rng.int(0, m.len() - 1);
                m[at] ^= 1 << rng.int(0, 7);
            }
            1 => m.truncate(rng.int(0, m.len() - 1)),
            2 => {
                let at = rng.int(0, m.len());
                m.insert(at, rng.int(0, 255) as u8);
            }
            _ => {
                let at = rng.int(0, 7);
                m[at] = rng.int(0, 255) as u8;
            }
        }
        if m == bytes {
            continue;
        }
        match CacheSnapshot::from_bytes(&m) {
            Err(CacheError::Snapshot(_)) => {}
            Err(other) => panic!("mutation {i}: wrong error {other}"),
            Ok((s, _)) => {
                // Only a change the JSON reader ignores (whitespace in the
                // header) may pass; it must then mean the same snapshot.
                assert_eq!(s, lava_snapshot(), "mutation {i} was accepted with another meaning");
            }
        }
    }
}

/// Seeds for the `kv_snapshot` fuzz target (fuzz/README.md): small valid
/// snapshots of every kind, written when `LAVA_FUZZ_CORPUS` names a folder.
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("LAVA_FUZZ_CORPUS") else { return };
    let dir = std::path::Path::new(&dir).join("kv_snapshot");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let kinds: [(&str, Box<dyn Fn() -> Box<dyn KvCache<B>>>); 5] = [
        ("full", Box::new(|| full(KvDtype::F32))),
        ("lava-q8", Box::new(|| compressed(policy(PolicyName::Lava, 8), KvDtype::Q8_0, Some(2)))),
        ("cake-chunked", Box::new(|| compressed_chunked(policy(PolicyName::Cake, 8), KvDtype::F32, None, true))),
        ("snapkv", Box::new(|| compressed(policy(PolicyName::SnapKv, 8), KvDtype::F32, None))),
        ("sliding", Box::new(sliding)),
    ];
    let mut rng = Rng::new(5);
    for (name, make) in kinds {
        let mut c = make();
        run(c.as_mut(), &step(&mut rng, 12));
        run(c.as_mut(), &step(&mut rng, 3));
        let bytes = c.snapshot().expect("snapshot").to_bytes(&meta()).expect("bytes");
        std::fs::write(dir.join(format!("{name}.lvc")), bytes).expect("seed");
    }
}
