//! Snapshots of a cache: what it holds, copied to the host, written to one
//! self-describing file and read back into a cache of the same kind.
//!
//! A [`CacheSnapshot`] is taken with [`KvCache::snapshot`](crate::KvCache::snapshot)
//! and put back into a freshly built, empty cache of the same shape, policy
//! (every parameter) and KV dtype with [`KvCache::restore`](crate::KvCache::restore):
//! the restored cache then behaves exactly as the original would have, token
//! for token (same kept slots in the same storage order, same K/V bytes, same
//! layer and head budgets, same query window for re-scoring). Options that
//! shape only the allocation (decode headroom, `max_tokens`) are the new
//! cache's own.
//!
//! # File layout
//!
//! A snapshot file is a [safetensors](https://github.com/huggingface/safetensors)
//! file: an 8-byte little-endian header length, a JSON header, then the tensor
//! bytes, so any safetensors reader can open it. Per layer `l` of the cache
//! (prefix `inner.` for the global layers of a
//! [`SlidingWindowCache`](crate::SlidingWindowCache)):
//!
//! | tensor                | dtype | shape          | holds |
//! |-----------------------|-------|----------------|-------|
//! | `layer.l.slots`       | U32   | `[R, 2]`       | each kept row's (KV head, absolute position), in storage order |
//! | `layer.l.keys`        | F32/F16 | `[R, D]`     | K rows as stored (f32 and f16 caches) |
//! | `layer.l.keys.codes`  | I8    | `[R, D]`       | Q8_0 codes (q8_0 caches) |
//! | `layer.l.keys.scales` | F16   | `[R, D / 32]`  | Q8_0 scales (q8_0 caches) |
//! | `layer.l.values...`   |       |                | V, as K |
//! | `layer.l.queries`     | F32   | `[H_q, r, D]`  | the last `r <= w` queries, when the cache re-scores after prefill |
//!
//! The header's `__metadata__` holds `format` (`lava-kv-snapshot`),
//! `version` (this module's [`SNAPSHOT_VERSION`]), `cache` (a JSON object:
//! the kind, shape, KV dtype, the policy with every parameter, the sliding
//! windows, and per layer the tokens appended, the layer budget, the head
//! budgets and the layer weight), the caller's own entries (names outside
//! `format`, `version`, `cache` and `sha256`), and `sha256`: the SHA-256 of
//! every other metadata entry and every tensor (name, dtype, shape, bytes) in
//! name order, so a flipped bit anywhere is caught.
//!
//! Reading refuses, in one sentence and before anything reaches a device, a
//! file that is truncated, not safetensors, of another format or version,
//! whose checksum does not match, or whose tensors do not agree with its
//! header (row counts, heads, positions, dimensions).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{CacheError, CacheShape, FloorRule, KvDtype, PolicyConfig, PolicyName, Pooling, Q8_0_BLOCK};

/// The `format` entry of a snapshot file.
pub const SNAPSHOT_FORMAT: &str = "lava-kv-snapshot";
/// The version of the layout this module writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Metadata names the snapshot itself uses; a caller's entries take others.
pub const RESERVED_KEYS: [&str; 4] = ["format", "version", "cache", "sha256"];

/// K or V rows exactly as a cache stores them, on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredRows {
    /// `f32` values, `R * D`.
    F32(Vec<f32>),
    /// IEEE half-precision bit patterns, `R * D`.
    F16(Vec<u16>),
    /// Q8_0: codes (`R * D`) and f16 scale bit patterns (`R * D / 32`).
    Q8_0 {
        /// One code per value.
        codes: Vec<i8>,
        /// One f16 scale per block of 32 values.
        scales: Vec<u16>,
    },
}

impl StoredRows {
    /// The format of these rows.
    pub fn dtype(&self) -> KvDtype {
        match self {
            StoredRows::F32(_) => KvDtype::F32,
            StoredRows::F16(_) => KvDtype::F16,
            StoredRows::Q8_0 { .. } => KvDtype::Q8_0,
        }
    }

    /// Number of values (`R * D`).
    pub fn values(&self) -> usize {
        match self {
            StoredRows::F32(x) => x.len(),
            StoredRows::F16(x) => x.len(),
            StoredRows::Q8_0 { codes, .. } => codes.len(),
        }
    }

    /// Bytes as stored in a file.
    pub fn bytes(&self) -> usize {
        match self {
            StoredRows::F32(x) => x.len() * 4,
            StoredRows::F16(x) => x.len() * 2,
            StoredRows::Q8_0 { codes, scales } => codes.len() + scales.len() * 2,
        }
    }
}

/// One layer of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSnapshot {
    /// Tokens ever appended to the layer (its next position).
    pub appended: usize,
    /// Each kept row's `(KV head, absolute position)`, in storage order.
    pub slots: Vec<(usize, usize)>,
    /// K rows, one per slot.
    pub keys: StoredRows,
    /// V rows, one per slot.
    pub values: StoredRows,
    /// The layer budget `B_l` in force (compressing caches).
    pub budget: Option<usize>,
    /// The head budgets in force (compressing caches).
    pub caps: Option<Vec<usize>>,
    /// The layer's weight in a dynamic layer allocation (LAVa's entropy, CAKE's preference).
    pub weight: Option<f64>,
    /// The last `r` queries `[H_q, r, D]` kept for re-scoring: `(r, values)`.
    pub queries: Option<(usize, Vec<f32>)>,
    /// The ranking a chunked prefill keeps for its next chunk's cascade.
    pub ranking: Option<RankingSnapshot>,
}

/// A layer's ranking of its evictable positions, kept between the chunks
/// of a chunked prefill.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingSnapshot {
    /// Per KV head: the evictable positions from the highest score to the lowest.
    pub order: Vec<Vec<usize>>,
    /// Per KV head: their scores, in that order.
    pub scores: Vec<Vec<f32>>,
    /// The layer's weight when it was ranked.
    pub weight: f64,
    /// The first position of the window it was ranked with.
    pub boundary: usize,
    /// Per KV head: how many of its ranked positions it keeps.
    pub caps: Vec<usize>,
}

impl LayerSnapshot {
    /// A layer that holds nothing (before its prefill).
    pub fn empty(dtype: KvDtype) -> Self {
        let rows = match dtype {
            KvDtype::F32 => StoredRows::F32(Vec::new()),
            KvDtype::F16 => StoredRows::F16(Vec::new()),
            KvDtype::Q8_0 => StoredRows::Q8_0 { codes: Vec::new(), scales: Vec::new() },
        };
        Self { appended: 0, slots: Vec::new(), keys: rows.clone(), values: rows, budget: None, caps: None, weight: None, queries: None, ranking: None }
    }
}

/// Which cache a snapshot was taken from, with what only that kind has.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotKind {
    /// A [`FullCache`](crate::FullCache).
    Full,
    /// A [`CompressedCache`](crate::CompressedCache) and its policy, every parameter.
    Compressed {
        /// The policy.
        policy: PolicyConfig,
        /// Decode-time eviction slack, if on.
        decode_slack: Option<usize>,
        /// Whether chunked prefill is on.
        chunked_prefill: bool,
    },
    /// A [`SlidingWindowCache`](crate::SlidingWindowCache): per model layer its
    /// window (`None`: global), the local layers' rings in [`CacheSnapshot::layers`]
    /// (global layers empty there), and the global layers' cache.
    Sliding {
        /// Per model layer: its window, `None` for a global layer.
        windows: Vec<Option<usize>>,
        /// The global layers' cache, when the model has any.
        inner: Option<Box<CacheSnapshot>>,
    },
}

/// A cache's contents on the host (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSnapshot {
    /// Which cache.
    pub kind: SnapshotKind,
    /// The shape it serves.
    pub shape: CacheShape,
    /// How its K/V rows are stored.
    pub kv_dtype: KvDtype,
    /// Per layer.
    pub layers: Vec<LayerSnapshot>,
}

impl CacheSnapshot {
    /// Tokens appended to the cache (the position of the next token).
    pub fn next_position(&self) -> usize {
        self.layers.first().map_or(0, |l| l.appended)
    }

    /// Bytes of K and V the snapshot holds (rows as stored), over every layer.
    pub fn kv_bytes(&self) -> usize {
        let own: usize = self.layers.iter().map(|l| l.keys.bytes() + l.values.bytes()).sum();
        match &self.kind {
            SnapshotKind::Sliding { inner: Some(inner), .. } => own + inner.kv_bytes(),
            _ => own,
        }
    }

    /// The snapshot as a safetensors file image, with the caller's `metadata`
    /// (names other than [`RESERVED_KEYS`]; refused otherwise).
    pub fn to_bytes(&self, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, CacheError> {
        if let Some(k) = metadata.keys().find(|k| RESERVED_KEYS.contains(&k.as_str())) {
            return Err(snapshot_error(format!("the metadata name {k:?} is the snapshot's own; pick another")));
        }
        let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let header = self.header_into("", &mut tensors);
        let mut meta: BTreeMap<String, String> = metadata.clone();
        meta.insert("format".into(), SNAPSHOT_FORMAT.into());
        meta.insert("version".into(), SNAPSHOT_VERSION.to_string());
        meta.insert("cache".into(), serde_json::to_string(&header).map_err(|e| CacheError::Internal(e.to_string()))?);
        let sum = checksum(&meta, tensors.iter().map(|(n, (d, s, b))| (n.as_str(), *d, s.as_slice(), b.as_slice())));
        meta.insert("sha256".into(), sum);
        Ok(safetensors_image(&meta, &tensors))
    }

    /// Reads a snapshot file image: the snapshot and the caller's metadata.
    /// Refuses (module docs) anything that is not a whole, intact snapshot of
    /// this version.
    pub fn from_bytes(bytes: &[u8]) -> Result<(CacheSnapshot, BTreeMap<String, String>), CacheError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| snapshot_error(format!("it is not a whole safetensors file ({e}); it may be truncated")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| snapshot_error(e.to_string()))?;
        let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        match meta.get("format") {
            Some(f) if f == SNAPSHOT_FORMAT => {}
            Some(f) => return Err(snapshot_error(format!("it holds {f:?}, not a lava KV snapshot"))),
            None => return Err(snapshot_error("it is a safetensors file but not a lava KV snapshot (no format entry)".into())),
        }
        match meta.get("version").map(|v| v.as_str()) {
            Some(v) if v == SNAPSHOT_VERSION.to_string() => {}
            v => {
                return Err(snapshot_error(format!(
                    "it was written in snapshot version {}, and this lava reads version {SNAPSHOT_VERSION}; compress the context again",
                    v.unwrap_or("(none)")
                )))
            }
        }
        let mut rest = meta.clone();
        let stored_sum = rest.remove("sha256").ok_or_else(|| snapshot_error("it has no sha256 entry".into()))?;
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let mut views = BTreeMap::new();
        for n in &names {
            views.insert(n.clone(), st.tensor(n).map_err(|e| snapshot_error(e.to_string()))?);
        }
        let sum = checksum(&rest, views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
        if sum != stored_sum {
            return Err(snapshot_error("its checksum does not match its contents: the file is corrupted".into()));
        }
        let cache = rest.remove("cache").ok_or_else(|| snapshot_error("it has no cache entry".into()))?;
        rest.remove("format");
        rest.remove("version");
        let header: Header = serde_json::from_str(&cache).map_err(|e| snapshot_error(format!("its cache entry is not valid: {e}")))?;
        let mut used = 0;
        let snapshot = CacheSnapshot::from_header(&header, "", &views, &mut used, 0)?;
        if used != views.len() {
            return Err(snapshot_error(format!("it holds {} tensors that its header does not describe", views.len() - used)));
        }
        Ok((snapshot, rest))
    }

    /// Writes the snapshot to `path` atomically (a temporary file in the same
    /// directory, synced, then renamed over `path`): a reader never sees half
    /// a file, and a failure leaves `path` as it was.
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<(), CacheError> {
        let bytes = self.to_bytes(metadata)?;
        write_atomically(path, &bytes).map_err(|e| snapshot_error_at(path, format!("it could not be written: {e}")))
    }

    /// Reads a snapshot file (see [`from_bytes`](Self::from_bytes)); errors name the file.
    pub fn load(path: &Path) -> Result<(CacheSnapshot, BTreeMap<String, String>), CacheError> {
        let bytes = std::fs::read(path).map_err(|e| snapshot_error_at(path, format!("it could not be read: {e}")))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            CacheError::Snapshot(msg) => CacheError::Snapshot(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Checks that this snapshot can go into a cache of `kind`, `shape` and
    /// `kv_dtype` (the policy compared parameter by parameter); the error
    /// names what differs.
    pub fn check_fits(&self, kind: &SnapshotKind, shape: CacheShape, kv_dtype: KvDtype) -> Result<(), CacheError> {
        if self.shape != shape {
            return Err(snapshot_error(format!("it was taken from a cache of shape {:?}, not {shape:?}: another model", self.shape)));
        }
        if self.kv_dtype != kv_dtype {
            return Err(snapshot_error(format!("its keys and values are stored as {}, not {kv_dtype}; use --kv-dtype {}", self.kv_dtype, self.kv_dtype)));
        }
        match (&self.kind, kind) {
            (SnapshotKind::Full, SnapshotKind::Full) => Ok(()),
            (
                SnapshotKind::Compressed { policy: a, decode_slack: sa, chunked_prefill: ca },
                SnapshotKind::Compressed { policy: b, decode_slack: sb, chunked_prefill: cb },
            ) => {
                if a != b {
                    return Err(snapshot_error(format!("it was compressed with {}, not {}; use the same policy and parameters", policy_text(a), policy_text(b))));
                }
                if sa != sb {
                    return Err(snapshot_error(format!("its decode-time eviction slack is {sa:?}, not {sb:?}; use the same --decode-budget")));
                }
                if ca != cb {
                    let on = |c: &bool| if *c { "on" } else { "off" };
                    return Err(snapshot_error(format!("it was compressed with chunked prefill {}, and this cache has it {}", on(ca), on(cb))));
                }
                Ok(())
            }
            (SnapshotKind::Sliding { windows: a, .. }, SnapshotKind::Sliding { windows: b, .. }) if a == b => Ok(()),
            (a, b) => Err(snapshot_error(format!("it holds a {} cache, not a {} one", kind_name(a), kind_name(b)))),
        }
    }

    /// The header of this snapshot, its tensors added to `out` under `prefix`.
    fn header_into(&self, prefix: &str, out: &mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> Header {
        let d = self.shape.head_dim;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter().enumerate() {
            let name = format!("{prefix}layer.{l}");
            let rows = layer.slots.len();
            let slots: Vec<u8> = layer.slots.iter().flat_map(|&(g, p)| [g as u32, p as u32]).flat_map(u32::to_le_bytes).collect();
            out.insert(format!("{name}.slots"), (Dtype::U32, vec![rows, 2], slots));
            for (what, x) in [("keys", &layer.keys), ("values", &layer.values)] {
                rows_into(out, &format!("{name}.{what}"), x, rows, d);
            }
            if let Some((r, q)) = &layer.queries {
                let h_q = self.shape.query_heads;
                out.insert(format!("{name}.queries"), (Dtype::F32, vec![h_q, *r, d], q.iter().flat_map(|x| x.to_le_bytes()).collect()));
            }
            if let Some(rk) = &layer.ranking {
                let total: usize = rk.order.iter().map(Vec::len).sum();
                let order: Vec<u8> = rk.order.iter().flatten().flat_map(|&p| (p as u32).to_le_bytes()).collect();
                let scores: Vec<u8> = rk.scores.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
                out.insert(format!("{name}.ranking.order"), (Dtype::U32, vec![total], order));
                out.insert(format!("{name}.ranking.scores"), (Dtype::F32, vec![total], scores));
            }
            layers.push(LayerHeader {
                appended: layer.appended,
                rows,
                budget: layer.budget,
                caps: layer.caps.clone(),
                weight: layer.weight,
                query_rows: layer.queries.as_ref().map(|(r, _)| *r),
                ranking: layer.ranking.as_ref().map(|rk| RankingHeader {
                    lens: rk.order.iter().map(Vec::len).collect(),
                    weight: rk.weight,
                    boundary: rk.boundary,
                    caps: rk.caps.clone(),
                }),
            });
        }
        let (kind, policy, decode_slack, chunked_prefill, windows, inner) = match &self.kind {
            SnapshotKind::Full => ("full", None, None, None, None, None),
            SnapshotKind::Compressed { policy, decode_slack, chunked_prefill } => {
                ("compressed", Some(PolicyHeader::of(policy)), *decode_slack, Some(*chunked_prefill), None, None)
            }
            SnapshotKind::Sliding { windows, inner } => {
                let inner = inner.as_ref().map(|i| Box::new(i.header_into(&format!("{prefix}inner."), out)));
                ("sliding", None, None, None, Some(windows.clone()), inner)
            }
        };
        let s = self.shape;
        Header {
            kind: kind.into(),
            shape: [s.layers, s.query_heads, s.kv_heads, s.head_dim],
            kv_dtype: self.kv_dtype.name().into(),
            policy,
            decode_slack,
            chunked_prefill,
            windows,
            layers,
            inner,
        }
    }

    /// The snapshot a header and its tensors describe, every count checked.
    fn from_header(h: &Header, prefix: &str, views: &BTreeMap<String, TensorView<'_>>, used: &mut usize, depth: usize) -> Result<Self, CacheError> {
        let [layers, query_heads, kv_heads, head_dim] = h.shape;
        let shape = CacheShape { layers, query_heads, kv_heads, head_dim };
        shape.validate().map_err(|e| snapshot_error(format!("its shape is not usable: {e}")))?;
        let kv_dtype: KvDtype = h.kv_dtype.parse().map_err(|_| snapshot_error(format!("its kv dtype {:?} is unknown", h.kv_dtype)))?;
        if kv_dtype == KvDtype::Q8_0 && head_dim % Q8_0_BLOCK != 0 {
            return Err(snapshot_error(format!("it stores q8_0 rows of {head_dim} values, not a multiple of {Q8_0_BLOCK}")));
        }
        if h.layers.len() != layers {
            return Err(snapshot_error(format!("its header describes {} layers of a {layers}-layer cache", h.layers.len())));
        }
        let kind = match (h.kind.as_str(), &h.policy, &h.windows, &h.inner) {
            ("full", None, None, None) => SnapshotKind::Full,
            ("compressed", Some(p), None, None) => {
                SnapshotKind::Compressed { policy: p.to_config()?, decode_slack: h.decode_slack, chunked_prefill: h.chunked_prefill.unwrap_or(false) }
            }
            ("sliding", None, Some(w), inner) if depth == 0 => {
                if w.len() != layers || w.contains(&Some(0)) {
                    return Err(snapshot_error("its sliding windows do not match its layers".into()));
                }
                let inner = match inner {
                    Some(i) => Some(Box::new(Self::from_header(i, &format!("{prefix}inner."), views, used, depth + 1)?)),
                    None => None,
                };
                if inner.as_ref().map_or(0, |i| i.shape.layers) != w.iter().filter(|w| w.is_none()).count() {
                    return Err(snapshot_error("its global layers' cache does not match its windows".into()));
                }
                SnapshotKind::Sliding { windows: w.clone(), inner }
            }
            (k, ..) => return Err(snapshot_error(format!("its cache kind {k:?} is unknown or inconsistent"))),
        };
        let mut out = Vec::with_capacity(layers);
        for (l, lh) in h.layers.iter().enumerate() {
            out.push(layer_from(lh, &format!("{prefix}layer.{l}"), shape, kv_dtype, views, used)?);
        }
        Ok(CacheSnapshot { kind, shape, kv_dtype, layers: out })
    }
}

/// The safetensors image of `tensors` with `meta`: header keys and tensor
/// data in name order, so the same snapshot always gives the same bytes.
fn safetensors_image(meta: &BTreeMap<String, String>, tensors: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut offset = 0;
    for (name, (dtype, shape, bytes)) in tensors {
        let dtype = format!("{dtype:?}");
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}));
        offset += bytes.len();
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    // The data starts 8-byte aligned, as safetensors writers pad it.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
    tensors.values().for_each(|(_, _, b)| out.extend_from_slice(b));
    out
}

/// `x` (`rows` rows of `d` values) as the tensors of `name`.
fn rows_into(out: &mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>, name: &str, x: &StoredRows, rows: usize, d: usize) {
    match x {
        StoredRows::F32(v) => {
            out.insert(name.into(), (Dtype::F32, vec![rows, d], v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
        StoredRows::F16(v) => {
            out.insert(name.into(), (Dtype::F16, vec![rows, d], v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
        StoredRows::Q8_0 { codes, scales } => {
            out.insert(format!("{name}.codes"), (Dtype::I8, vec![rows, d], codes.iter().map(|&c| c as u8).collect()));
            out.insert(format!("{name}.scales"), (Dtype::F16, vec![rows, d / Q8_0_BLOCK], scales.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
    }
}

/// One layer of a header with its tensors, every count checked.
fn layer_from(
    lh: &LayerHeader,
    name: &str,
    shape: CacheShape,
    kv_dtype: KvDtype,
    views: &BTreeMap<String, TensorView<'_>>,
    used: &mut usize,
) -> Result<LayerSnapshot, CacheError> {
    let rows = lh.rows;
    let d = shape.head_dim;
    let slots_raw = tensor(views, &format!("{name}.slots"), Dtype::U32, &[rows, 2], used)?;
    let words: Vec<usize> = slots_raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let slots: Vec<(usize, usize)> = words.chunks_exact(2).map(|s| (s[0], s[1])).collect();
    let mut seen = std::collections::HashSet::with_capacity(slots.len());
    for &(g, p) in &slots {
        if g >= shape.kv_heads || p >= lh.appended {
            return Err(snapshot_error(format!("{name} keeps (head {g}, position {p}), outside its {} heads and {} positions", shape.kv_heads, lh.appended)));
        }
        if !seen.insert((g, p)) {
            return Err(snapshot_error(format!("{name} keeps (head {g}, position {p}) twice")));
        }
    }
    let mut read_rows = |what: &str| -> Result<StoredRows, CacheError> {
        let n = format!("{name}.{what}");
        Ok(match kv_dtype {
            KvDtype::F32 => StoredRows::F32(le_f32(tensor(views, &n, Dtype::F32, &[rows, d], used)?)),
            KvDtype::F16 => StoredRows::F16(le_u16(tensor(views, &n, Dtype::F16, &[rows, d], used)?)),
            KvDtype::Q8_0 => StoredRows::Q8_0 {
                codes: tensor(views, &format!("{n}.codes"), Dtype::I8, &[rows, d], used)?.iter().map(|&b| b as i8).collect(),
                scales: le_u16(tensor(views, &format!("{n}.scales"), Dtype::F16, &[rows, d / Q8_0_BLOCK], used)?),
            },
        })
    };
    let keys = finite_rows(read_rows("keys")?, name, "keys")?;
    let values = finite_rows(read_rows("values")?, name, "values")?;
    if let Some(caps) = &lh.caps {
        if caps.len() != shape.kv_heads {
            return Err(snapshot_error(format!("{name} has {} head budgets for {} KV heads", caps.len(), shape.kv_heads)));
        }
    }
    let queries = match lh.query_rows {
        Some(r) => {
            let q = le_f32(tensor(views, &format!("{name}.queries"), Dtype::F32, &[shape.query_heads, r, d], used)?);
            if q.iter().any(|x| !x.is_finite()) {
                return Err(snapshot_error(format!("{name}.queries holds a value that is not a finite number")));
            }
            Some((r, q))
        }
        None => None,
    };
    let ranking = match &lh.ranking {
        Some(rh) => Some(ranking_from(rh, name, shape, lh.appended, views, used)?),
        None => None,
    };
    Ok(LayerSnapshot { appended: lh.appended, slots, keys, values, budget: lh.budget, caps: lh.caps.clone(), weight: lh.weight, queries, ranking })
}

/// A layer's ranking with its tensors: one entry per head, positions below
/// its boundary and at most once per head.
fn ranking_from(
    rh: &RankingHeader,
    name: &str,
    shape: CacheShape,
    appended: usize,
    views: &BTreeMap<String, TensorView<'_>>,
    used: &mut usize,
) -> Result<RankingSnapshot, CacheError> {
    if rh.lens.len() != shape.kv_heads || rh.caps.len() != shape.kv_heads || rh.boundary > appended {
        return Err(snapshot_error(format!("{name}'s ranking does not match its {} KV heads and {appended} positions", shape.kv_heads)));
    }
    let total = rh.lens.iter().try_fold(0usize, |a, &b| a.checked_add(b)).ok_or_else(|| snapshot_error(format!("{name}'s ranking is too long")))?;
    let order: Vec<usize> = tensor(views, &format!("{name}.ranking.order"), Dtype::U32, &[total], used)?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let scores = le_f32(tensor(views, &format!("{name}.ranking.scores"), Dtype::F32, &[total], used)?);
    let (mut o, mut s, mut at) = (Vec::new(), Vec::new(), 0);
    for &len in &rh.lens {
        let head = &order[at..at + len];
        let mut seen = std::collections::HashSet::with_capacity(len);
        if head.iter().any(|&p| p >= rh.boundary || !seen.insert(p)) {
            return Err(snapshot_error(format!("{name}'s ranking holds a position twice or past its boundary {}", rh.boundary)));
        }
        o.push(head.to_vec());
        s.push(scores[at..at + len].to_vec());
        at += len;
    }
    Ok(RankingSnapshot { order: o, scores: s, weight: rh.weight, boundary: rh.boundary, caps: rh.caps.clone() })
}

/// The bytes of tensor `name`, checked to be `dtype` and `shape`.
fn tensor<'a>(views: &BTreeMap<String, TensorView<'a>>, name: &str, dtype: Dtype, shape: &[usize], used: &mut usize) -> Result<&'a [u8], CacheError> {
    let v = views.get(name).ok_or_else(|| snapshot_error(format!("it has no tensor {name}")))?;
    if v.dtype() != dtype || v.shape() != shape {
        return Err(snapshot_error(format!("its tensor {name} is {:?} {:?}, its header says {dtype:?} {shape:?}", v.dtype(), v.shape())));
    }
    *used += 1;
    Ok(v.data())
}

/// `rows` if every stored value (f32, f16, Q8_0's f16 scales) is a finite
/// number: a cache never holds NaN or infinity, and one read back would
/// poison every attention over it.
fn finite_rows(rows: StoredRows, name: &str, what: &str) -> Result<StoredRows, CacheError> {
    let f16_finite = |h: &u16| h & 0x7C00 != 0x7C00;
    let ok = match &rows {
        StoredRows::F32(x) => x.iter().all(|v| v.is_finite()),
        StoredRows::F16(x) => x.iter().all(f16_finite),
        StoredRows::Q8_0 { scales, .. } => scales.iter().all(f16_finite),
    };
    if ok {
        Ok(rows)
    } else {
        Err(snapshot_error(format!("{name}.{what} holds a value that is not a finite number")))
    }
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn le_u16(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

/// SHA-256 over the metadata (name, value) and the tensors (name, dtype,
/// shape, bytes), both in name order, each field length-prefixed.
fn checksum<'a>(meta: &BTreeMap<String, String>, tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in meta {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (n, d, s, b) in sorted {
        field(n.as_bytes());
        field(format!("{d:?}").as_bytes());
        field(&s.iter().flat_map(|x| (*x as u64).to_le_bytes()).collect::<Vec<u8>>());
        field(b);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` to `path` through a synced temporary file in the same directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "snapshot".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn snapshot_error(msg: String) -> CacheError {
    CacheError::Snapshot(msg)
}

fn snapshot_error_at(path: &Path, msg: String) -> CacheError {
    CacheError::Snapshot(format!("{}: {msg}", path.display()))
}

fn kind_name(k: &SnapshotKind) -> &'static str {
    match k {
        SnapshotKind::Full => "full",
        SnapshotKind::Compressed { .. } => "compressed",
        SnapshotKind::Sliding { .. } => "sliding-window",
    }
}

fn policy_text(p: &PolicyConfig) -> String {
    serde_json::to_string(&PolicyHeader::of(p)).unwrap_or_else(|_| p.policy.to_string())
}

/// The `cache` metadata entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    kind: String,
    /// `[layers, query heads, KV heads, head dim]`.
    shape: [usize; 4],
    kv_dtype: String,
    #[serde(default)]
    policy: Option<PolicyHeader>,
    #[serde(default)]
    decode_slack: Option<usize>,
    #[serde(default)]
    chunked_prefill: Option<bool>,
    #[serde(default)]
    windows: Option<Vec<Option<usize>>>,
    layers: Vec<LayerHeader>,
    #[serde(default)]
    inner: Option<Box<Header>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerHeader {
    appended: usize,
    rows: usize,
    budget: Option<usize>,
    caps: Option<Vec<usize>>,
    weight: Option<f64>,
    query_rows: Option<usize>,
    #[serde(default)]
    ranking: Option<RankingHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankingHeader {
    /// Ranked positions per KV head.
    lens: Vec<usize>,
    weight: f64,
    boundary: usize,
    caps: Vec<usize>,
}

/// Every parameter of a [`PolicyConfig`], by name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyHeader {
    policy: String,
    budget: usize,
    window: usize,
    kernel_size: usize,
    pooling: String,
    floor_alpha: f64,
    pyramid_beta: usize,
    sinks: usize,
    floor_rule: Option<String>,
}

impl PolicyHeader {
    fn of(p: &PolicyConfig) -> Self {
        Self {
            policy: p.policy.to_string(),
            budget: p.budget,
            window: p.window,
            kernel_size: p.kernel_size,
            pooling: p.pooling.to_string(),
            floor_alpha: p.floor_alpha,
            pyramid_beta: p.pyramid_beta,
            sinks: p.sinks,
            floor_rule: p.floor_rule.map(|r| r.to_string()),
        }
    }

    fn to_config(&self) -> Result<PolicyConfig, CacheError> {
        let bad = |what: &str, v: &str| snapshot_error(format!("its policy {what} {v:?} is unknown"));
        let name: PolicyName = self.policy.parse().map_err(|_| bad("name", &self.policy))?;
        let pooling: Pooling = self.pooling.parse().map_err(|_| bad("pooling", &self.pooling))?;
        let floor_rule = match &self.floor_rule {
            Some(r) => Some(r.parse::<FloorRule>().map_err(|_| bad("floor rule", r))?),
            None => None,
        };
        let mut c = PolicyConfig::new(name, self.budget);
        c.window = self.window;
        c.kernel_size = self.kernel_size;
        c.pooling = pooling;
        c.floor_alpha = self.floor_alpha;
        c.pyramid_beta = self.pyramid_beta;
        c.sinks = self.sinks;
        c.floor_rule = floor_rule;
        c.validate().map_err(|e| snapshot_error(format!("its policy is not valid: {e}")))?;
        Ok(c)
    }
}

