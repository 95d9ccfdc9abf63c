//! The context cache: compressed (or full) cache states kept after a prefix
//! of a prompt, so that a later request beginning with the same tokens
//! starts from a copy of that state and prefills only the rest.
//!
//! An entry is keyed by (the served model, its token prefix, the policy with
//! all its parameters, the KV dtype): the model is the one the server loaded
//! (files on disk name its SHA-256); the rest is compared whole. What is kept
//! is the cache's [`CacheSnapshot`] (its retained rows as stored, plus the
//! scoring state a compressed cache carries from chunk to chunk); a hit
//! builds the request's own cache and [`KvCache::restore`]s the snapshot into
//! it: a plain copy of the retained bytes, never shared with the sequence.
//!
//! Which states are kept (the engine decides, [`crate::engine`]):
//! - at the longest message boundary of a chat that is at least
//!   `--context-cache-min` tokens and lies before the last message: the
//!   document, system prompt or earlier turns, compressed without the
//!   question that follows (question-agnostic), when first seen;
//! - at the end of an answer (prompt plus the generated tokens in the
//!   cache), when the prompt is at least `--context-cache-min` tokens: the
//!   next turn of the conversation starts from it.
//!
//! Bounds: the entries held in memory take their bytes (K/V rows as stored
//! plus 4 bytes per token id) from the same ledger as running sequences'
//! reservations, at most `--context-cache-memory`; the least recently used
//! go first, also when a request waits for memory they hold. With
//! `--context-cache-dir`, every entry is also written there (one
//! [`SavedContext`] file each, atomically), at most `--context-cache-disk`
//! bytes (least recently used file removed first), and the directory's files
//! are indexed again at start; an entry only on disk is read back when a
//! request hits it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lava_cache::{CacheSnapshot, KvDtype, PolicyConfig};
use lava_run::cache::CacheOptions;
use lava_run::context::{policy_of, ContextPolicy, PromptLayout, SavedContext};

use crate::admission::Ledger;

/// The context cache's settings.
#[derive(Debug, Clone, Default)]
pub struct ContextCacheConfig {
    /// `--context-cache-memory`: bytes its in-memory entries may hold (0: off).
    pub memory: u64,
    /// `--context-cache-min`: the shortest prefix (tokens) kept.
    pub min_tokens: usize,
    /// `--context-cache-dir`: where entries are also written, with the
    /// served model file's SHA-256 (files of another model are not used).
    pub dir: Option<(PathBuf, String)>,
    /// `--context-cache-disk`: bytes the directory's entries may take.
    pub disk: u64,
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextCacheStats {
    /// Requests that started from a kept state.
    pub hits: u64,
    /// Requests long enough to be kept that found nothing.
    pub misses: u64,
    /// Entries dropped from memory to stay within its limits.
    pub evictions: u64,
    /// Files removed to stay within `--context-cache-disk`.
    pub disk_evictions: u64,
    /// Prefix states held in memory.
    pub entries: u64,
    /// Turn states held in memory.
    pub turn_entries: u64,
    /// Bytes they hold.
    pub memory_bytes: u64,
    /// Files in the directory.
    pub disk_entries: u64,
    /// Bytes they take.
    pub disk_bytes: u64,
}

/// What a kept state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The state at a message boundary (a document, a system prompt): shared
    /// by every request that begins with it.
    Prefix,
    /// The state at the end of an answer: the next turn of one
    /// conversation starts from it, and the turn after that replaces it.
    /// Evicted before any prefix state.
    Turn,
}

struct Entry {
    kind: Kept,
    policy: ContextPolicy,
    tokens: Vec<u32>,
    /// In memory (and its bytes in the ledger).
    snapshot: Option<Arc<CacheSnapshot>>,
    bytes: u64,
    /// On disk: the file and its size.
    file: Option<(PathBuf, u64)>,
    used: u64,
}

/// The entries and their bounds (module docs).
pub struct ContextCache {
    config: ContextCacheConfig,
    entries: Vec<Entry>,
    clock: u64,
    stats: ContextCacheStats,
}

/// The key part a job's cache options give: what a kept state must have been made with.
pub fn serving_policy(policy: &PolicyConfig, kv_dtype: KvDtype) -> ContextPolicy {
    let o = CacheOptions::serving(policy, kv_dtype, 0);
    ContextPolicy { policy: policy.clone(), decode_slack: o.decode_slack, chunked_prefill: o.chunked_prefill, kv_dtype }
}

impl ContextCache {
    /// An empty cache; with a directory, indexes the files there (warnings
    /// on standard error for files it cannot use, which are left alone).
    pub fn new(config: ContextCacheConfig) -> Self {
        let mut c = Self { config, entries: Vec::new(), clock: 0, stats: ContextCacheStats::default() };
        c.index_dir();
        c
    }

    /// Whether it keeps anything.
    pub fn enabled(&self) -> bool {
        self.config.memory > 0
    }

    /// The shortest prefix kept.
    pub fn min_tokens(&self) -> usize {
        self.config.min_tokens
    }

    /// Its counts.
    pub fn stats(&self) -> ContextCacheStats {
        let mut s = self.stats;
        s.entries = self.entries.iter().filter(|e| e.snapshot.is_some() && e.kind == Kept::Prefix).count() as u64;
        s.turn_entries = self.entries.iter().filter(|e| e.snapshot.is_some() && e.kind == Kept::Turn).count() as u64;
        s.memory_bytes = self.entries.iter().filter(|e| e.snapshot.is_some()).map(|e| e.bytes).sum();
        s.disk_entries = self.entries.iter().filter(|e| e.file.is_some()).count() as u64;
        s.disk_bytes = self.entries.iter().filter_map(|e| e.file.as_ref().map(|f| f.1)).sum();
        s
    }

    fn index_dir(&mut self) {
        let Some((dir, sha)) = self.config.dir.clone() else { return };
        let Ok(read) = std::fs::read_dir(&dir) else { return };
        let mut found: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for e in read.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("lvc") {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            found.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), p, m.len()));
        }
        // Oldest first, so the clock orders them as they were last used.
        found.sort();
        for (_, path, size) in found {
            match SavedContext::load(&path, &sha) {
                Ok(saved) => {
                    self.clock += 1;
                    let kind = if path.to_string_lossy().ends_with("-turn.lvc") { Kept::Turn } else { Kept::Prefix };
                    self.entries.push(Entry { kind, policy: policy_of(&saved.snapshot), tokens: saved.tokens, snapshot: None, bytes: 0, file: Some((path, size)), used: self.clock });
                }
                Err(e) => eprintln!("lava serve: warning: context cache: not using {}: {e}", path.display()),
            }
        }
    }

    /// The longest kept state for `policy` whose tokens begin `prompt` and
    /// leave at least one prompt token to prefill: its length, kind and snapshot
    /// (read back from disk if needed, and then held in memory when the
    /// ledger has room). `counted`: whether a miss counts (the request is
    /// long enough to be kept).
    pub fn lookup(&mut self, policy: &ContextPolicy, prompt: &[u32], counted: bool, ledger: &mut Ledger) -> Option<(usize, Kept, Arc<CacheSnapshot>)> {
        if !self.enabled() {
            return None;
        }
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tokens.len() < prompt.len() && &e.policy == policy && prompt.starts_with(&e.tokens))
            .max_by_key(|(_, e)| (e.tokens.len(), e.snapshot.is_some()))
            .map(|(i, _)| i);
        let Some(i) = best else {
            if counted {
                self.stats.misses += 1;
            }
            return None;
        };
        self.clock += 1;
        self.entries[i].used = self.clock;
        let snapshot = match self.entries[i].snapshot.clone() {
            Some(s) => s,
            None => {
                let (path, _) = self.entries[i].file.clone()?;
                let sha = self.config.dir.as_ref().map(|d| d.1.clone()).unwrap_or_default();
                match SavedContext::load(&path, &sha) {
                    Ok(saved) if saved.tokens == self.entries[i].tokens => {
                        let s = Arc::new(saved.snapshot);
                        let bytes = entry_bytes(&s, saved.tokens.len());
                        if self.make_room(bytes, ledger, Some(i)) && ledger.try_reserve(bytes) {
                            self.entries[i].snapshot = Some(s.clone());
                            self.entries[i].bytes = bytes;
                        }
                        s
                    }
                    other => {
                        if let Err(e) = other {
                            eprintln!("lava serve: warning: context cache: dropping {}: {e}", path.display());
                        }
                        let _ = std::fs::remove_file(&path);
                        self.entries.remove(i);
                        self.stats.misses += u64::from(counted);
                        return None;
                    }
                }
            }
        };
        if let Some((path, _)) = &self.entries[i].file {
            touch(path);
        }
        self.stats.hits += 1;
        let (len, kind) = (self.entries[i].tokens.len(), self.entries[i].kind);
        self.prune();
        Some((len, kind, snapshot))
    }

    /// Keeps `snapshot`, the state after `tokens` made with `policy`, if it
    /// is not kept already: in memory when it fits (older entries evicted
    /// first), and on disk when a directory is set. `replaces`: the length
    /// of the turn state this one continues (the conversation has moved on
    /// from it: it is dropped).
    pub fn insert(&mut self, kind: Kept, policy: ContextPolicy, tokens: Vec<u32>, snapshot: CacheSnapshot, replaces: Option<usize>, ledger: &mut Ledger) {
        if !self.enabled() || self.entries.iter().any(|e| e.tokens == tokens && e.policy == policy) {
            return;
        }
        if let Some(len) = replaces {
            if let Some(i) = self.entries.iter().position(|e| e.kind == Kept::Turn && e.policy == policy && e.tokens.len() == len && tokens.starts_with(&e.tokens)) {
                if self.entries[i].snapshot.is_some() {
                    ledger.release(self.entries[i].bytes);
                }
                if let Some((path, _)) = self.entries[i].file.take() {
                    let _ = std::fs::remove_file(path);
                }
                self.entries.remove(i);
            }
        }
        let bytes = entry_bytes(&snapshot, tokens.len());
        let file = self.write(kind, &policy, &tokens, &snapshot);
        let in_memory = bytes <= self.config.memory && self.make_room(bytes, ledger, None) && ledger.try_reserve(bytes);
        if !in_memory && file.is_none() {
            return self.prune();
        }
        self.clock += 1;
        self.entries.push(Entry {
            kind,
            policy,
            tokens,
            snapshot: in_memory.then(|| Arc::new(snapshot)),
            bytes: if in_memory { bytes } else { 0 },
            file,
            used: self.clock,
        });
        self.trim_disk();
    }

    /// Evicts in-memory entries, least recently used first (never `keep`),
    /// until `bytes` more fit under `--context-cache-memory` and the ledger;
    /// whether they do.
    pub fn make_room(&mut self, bytes: u64, ledger: &mut Ledger, keep: Option<usize>) -> bool {
        loop {
            let held: u64 = self.entries.iter().filter(|e| e.snapshot.is_some()).map(|e| e.bytes).sum();
            let fits_own = held.saturating_add(bytes) <= self.config.memory;
            if fits_own && ledger.fits(bytes) {
                return true;
            }
            let Some(i) = self.victim(|i, e| e.snapshot.is_some() && Some(i) != keep) else { return false };
            self.evict(i, ledger);
        }
    }

    /// Frees in-memory entries, least recently used first, until the ledger
    /// can hold `bytes` (a request waiting for memory comes before kept
    /// contexts); whether it can.
    pub fn yield_to(&mut self, bytes: u64, ledger: &mut Ledger) -> bool {
        while !ledger.fits(bytes) {
            let Some(i) = self.victim(|_, e| e.snapshot.is_some()) else {
                self.prune();
                return false;
            };
            self.evict(i, ledger);
        }
        self.prune();
        true
    }

    /// The entry to drop next among those `candidate` accepts: turn states
    /// before prefix states, then least recently used first.
    fn victim(&self, candidate: impl Fn(usize, &Entry) -> bool) -> Option<usize> {
        self.entries.iter().enumerate().filter(|(i, e)| candidate(*i, e)).min_by_key(|(_, e)| (e.kind == Kept::Prefix, e.used)).map(|(i, _)| i)
    }

    fn evict(&mut self, i: usize, ledger: &mut Ledger) {
        let e = &mut self.entries[i];
        e.snapshot = None;
        ledger.release(e.bytes);
        e.bytes = 0;
        self.stats.evictions += 1;
    }

    /// Forgets entries neither in memory nor on disk (after evictions, which
    /// leave indices alone while a caller holds one).
    fn prune(&mut self) {
        self.entries.retain(|e| e.snapshot.is_some() || e.file.is_some());
    }

    fn write(&self, kind: Kept, policy: &ContextPolicy, tokens: &[u32], snapshot: &CacheSnapshot) -> Option<(PathBuf, u64)> {
        let (dir, sha) = self.config.dir.as_ref()?;
        let mut h = DefaultHasher::new();
        format!("{:?}", policy).hash(&mut h);
        tokens.hash(&mut h);
        let kind = if kind == Kept::Turn { "turn" } else { "prefix" };
        let path = dir.join(format!("ctx-{:016x}-{}-{kind}.lvc", h.finish(), tokens.len()));
        let saved = SavedContext { snapshot: snapshot.clone(), tokens: tokens.to_vec(), model_sha256: sha.clone(), layout: PromptLayout { chat: true, system: None } };
        match saved.save(&path) {
            Ok(()) => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if size > self.config.disk {
                    let _ = std::fs::remove_file(&path);
                    return None;
                }
                Some((path, size))
            }
            Err(e) => {
                eprintln!("lava serve: warning: context cache: cannot write {}: {e}", path.display());
                None
            }
        }
    }

    fn trim_disk(&mut self) {
        loop {
            let total: u64 = self.entries.iter().filter_map(|e| e.file.as_ref().map(|f| f.1)).sum();
            if total <= self.config.disk {
                return self.prune();
            }
            let Some(i) = self.victim(|_, e| e.file.is_some()) else { return self.prune() };
            if let Some((path, _)) = self.entries[i].file.take() {
                let _ = std::fs::remove_file(path);
            }
            self.stats.disk_evictions += 1;
        }
    }
}

/// Bytes an entry holds in memory: its K/V rows as stored plus its token ids.
fn entry_bytes(s: &CacheSnapshot, tokens: usize) -> u64 {
    (s.kv_bytes() + 4 * tokens) as u64
}

/// Marks a file used now (its modification time orders the files at start).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lava_cache::{CacheShape, PolicyName, SnapshotKind};

    /// A snapshot with no layers: an entry then holds 4 bytes a token.
    fn state() -> CacheSnapshot {
        CacheSnapshot { kind: SnapshotKind::Full, shape: CacheShape { layers: 0, query_heads: 1, kv_heads: 1, head_dim: 32 }, kv_dtype: KvDtype::F32, layers: Vec::new() }
    }

    fn lava() -> ContextPolicy {
        serving_policy(&PolicyConfig::new(PolicyName::Lava, 64), KvDtype::F32)
    }

    fn cache(memory: u64) -> ContextCache {
        ContextCache::new(ContextCacheConfig { memory, min_tokens: 1, dir: None, disk: 0 })
    }

    fn toks(n: u32) -> Vec<u32> {
        (0..n).collect()
    }

    #[test]
    fn the_longest_kept_prefix_of_the_same_policy_leaving_a_token_to_prefill() {
        let mut ledger = Ledger::new(1 << 20);
        let mut c = cache(1 << 20);
        c.insert(Kept::Prefix, lava(), toks(10), state(), None, &mut ledger);
        c.insert(Kept::Prefix, lava(), toks(20), state(), None, &mut ledger);
        assert_eq!(ledger.reserved(), 4 * 30, "each state's bytes are in the ledger");
        let hit = |c: &mut ContextCache, ledger: &mut Ledger, p: &[u32], policy: &ContextPolicy| c.lookup(policy, p, true, ledger).map(|h| h.0);
        assert_eq!(hit(&mut c, &mut ledger, &toks(25), &lava()), Some(20));
        // The whole prompt kept: the shorter state, so one token is left to prefill.
        assert_eq!(hit(&mut c, &mut ledger, &toks(20), &lava()), Some(10));
        let mut other = toks(25);
        other[5] = 99;
        assert_eq!(hit(&mut c, &mut ledger, &other, &lava()), None, "tokens differ inside the prefix");
        let snapkv = serving_policy(&PolicyConfig::new(PolicyName::SnapKv, 64), KvDtype::F32);
        assert_eq!(hit(&mut c, &mut ledger, &toks(25), &snapkv), None, "another policy");
        let q8 = serving_policy(&PolicyConfig::new(PolicyName::Lava, 64), KvDtype::Q8_0);
        assert_eq!(hit(&mut c, &mut ledger, &toks(25), &q8), None, "another KV dtype");
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries, s.memory_bytes), (2, 3, 2, 120));
    }

    #[test]
    fn least_recently_used_goes_first_turn_states_before_prefix_states() {
        let mut ledger = Ledger::new(1 << 20);
        let mut c = cache(4 * 30);
        c.insert(Kept::Prefix, lava(), toks(10), state(), None, &mut ledger);
        c.insert(Kept::Turn, lava(), toks(12), state(), None, &mut ledger);
        assert_eq!(c.stats().memory_bytes, 88);
        // 10 more tokens do not fit in 120 bytes: the turn state goes, though the prefix is older.
        let mut b = vec![7u32; 10];
        b[0] = 1;
        c.insert(Kept::Prefix, lava(), b.clone(), state(), None, &mut ledger);
        let s = c.stats();
        assert_eq!((s.entries, s.turn_entries, s.evictions, s.memory_bytes), (2, 0, 1, 80));
        assert_eq!(ledger.reserved(), 80);
        // Touch the first, then a third prefix evicts the second (least recently used).
        assert!(c.lookup(&lava(), &toks(11), true, &mut ledger).is_some());
        c.insert(Kept::Prefix, lava(), vec![5; 11], state(), None, &mut ledger);
        assert!(c.lookup(&lava(), &toks(11), true, &mut ledger).is_some());
        let mut with_b = b.clone();
        with_b.push(0);
        assert!(c.lookup(&lava(), &with_b, true, &mut ledger).is_none(), "the least recently used was evicted");
        assert_eq!(ledger.reserved(), c.stats().memory_bytes);
        // A request that needs the memory takes it from the kept states.
        let mut tight = Ledger::new(100);
        let mut d = cache(100);
        d.insert(Kept::Prefix, lava(), toks(20), state(), None, &mut tight);
        assert!(!tight.fits(30));
        assert!(d.yield_to(30, &mut tight));
        assert_eq!((tight.reserved(), d.stats().entries), (0, 0));
        // A state larger than the whole limit is not kept.
        d.insert(Kept::Prefix, lava(), toks(40), state(), None, &mut tight);
        assert_eq!(d.stats().entries, 0);
    }

    #[test]
    fn a_turn_state_replaces_the_one_it_went_on_from() {
        let mut ledger = Ledger::new(1 << 20);
        let mut c = cache(1 << 20);
        c.insert(Kept::Prefix, lava(), toks(10), state(), None, &mut ledger);
        c.insert(Kept::Turn, lava(), toks(15), state(), None, &mut ledger);
        let (len, kind, _) = c.lookup(&lava(), &toks(18), true, &mut ledger).expect("hit");
        assert_eq!((len, kind), (15, Kept::Turn));
        c.insert(Kept::Turn, lava(), toks(20), state(), Some(15), &mut ledger);
        let s = c.stats();
        assert_eq!((s.entries, s.turn_entries, s.memory_bytes), (1, 1, 4 * 30));
        assert_eq!(ledger.reserved(), 4 * 30);
        // Off: nothing is kept or found.
        let mut off = cache(0);
        off.insert(Kept::Prefix, lava(), toks(10), state(), None, &mut ledger);
        assert!(off.lookup(&lava(), &toks(12), true, &mut ledger).is_none());
        assert_eq!(off.stats(), ContextCacheStats::default());
    }
}
