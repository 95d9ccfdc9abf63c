//! The engine: one thread that owns the model and every sequence's cache and
//! runs the scheduler loop; the HTTP side talks to it through channels.
//!
//! Each turn of the loop:
//! 1. takes new jobs (blocking only when nothing is queued or running);
//! 2. drops every sequence whose client went away (its event receiver is
//!    gone), freeing its cache and its reservation at once;
//! 3. admits queued jobs in arrival order while their KV reservation fits
//!    under `--kv-memory` ([`crate::admission`]);
//! 4. runs one step of the model: the next chunk (`--prefill-chunk` tokens)
//!    of the oldest sequence still prefilling and one token of every sequence
//!    in the decode batch, together in one [`Llama::forward_runs`] (the
//!    weights are read once for all rows) when the rows fit in
//!    [`Llama::exact_batch_rows`], else the chunk and then one
//!    [`Llama::decode_batch`] step; each decoding sequence samples its next
//!    token, a finished one leaves the batch and frees its cache, and a
//!    sequence whose prompt is done samples its first token and joins the
//!    batch. A job asking for `n` choices prefills its prompt once; its
//!    cache is then copied ([`KvCache::box_clone`]) into `n` sequences, each
//!    drawing with its own seed (`seed + i`) and reserving its share of the
//!    job's reservation (`n` times one sequence's).
//!
//! A prompt is chunked from its own start, whatever else runs, so its prefill
//! does not depend on the other sequences; within the exact row limit no row
//! of a step depends on the others, so a sequence's greedy output is the same
//! alone and in a batch (beyond it, up to float summation order of batched
//! projections). A running conversation waits at most one prefill chunk for
//! its next token.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use lava_cache::{CacheShape, KvCache, KvDtype, PolicyConfig};
use lava_run::bytes::KvBytes;
use lava_run::cache::{build_cache, CacheOptions};
use lava_run::decode::{full_after, stops_before};
use lava_llama::{apply_repetition_penalty, token_logprob, Llama, Logits, Sampler, Sampling, TokenLogprob, Tokenizer};
use tokio::sync::mpsc::{error::TryRecvError, UnboundedReceiver, UnboundedSender};

use crate::admission::Ledger;
use crate::context_cache::{serving_policy, ContextCache, ContextCacheConfig, Kept};
use crate::api::FinishReason;
use crate::grammar::{apply_mask, Constraint, Mask};
use crate::metrics::{EngineGauges, Metrics};

/// What the engine thread loads before it serves.
pub struct Loaded<B: Backend> {
    /// The model.
    pub model: Llama<B>,
    /// Its tokenizer (handed to the HTTP side).
    pub tokenizer: Tokenizer,
    /// Tokens that end a generation (not sent).
    pub stop_tokens: Vec<u32>,
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `--kv-memory`: bytes all reservations may take.
    pub kv_memory: u64,
    /// `--max-queue`: jobs that may wait for memory; beyond, 429.
    pub max_queue: usize,
    /// `--prefill-chunk`: prompt tokens per prefill step.
    pub prefill_chunk: usize,
    /// The context cache (`--context-cache-*`; [`crate::context_cache`]).
    pub context_cache: ContextCacheConfig,
}

/// One request, tokenized and validated, for the engine.
#[derive(Debug)]
pub struct Job {
    /// Prompt token ids (non-empty, inside the vocabulary).
    pub prompt: Vec<u32>,
    /// Where the prompt's messages end (token offsets, ascending, each
    /// before the last message): where the context cache may keep a state.
    pub boundaries: Vec<usize>,
    /// Tokens to generate at most per choice (prompt plus this fits the
    /// context); 0: none, the prompt is only prefilled (for its log-probabilities).
    pub max_tokens: usize,
    /// How to pick tokens (choice `i` with [`Sampling::for_choice`]).
    pub sampling: Sampling,
    /// Choices generated from the one prompt (at least 1).
    pub n: usize,
    /// Send each generated token's log-probability and this many most
    /// likely tokens' ([`lava_llama::token_logprob`]: log-softmax of the raw logits).
    pub logprobs: Option<usize>,
    /// Send the prompt tokens' log-probabilities (each given the tokens
    /// before it; the first has none) with this many most likely tokens'.
    pub prompt_logprobs: Option<usize>,
    /// The cache policy.
    pub policy: PolicyConfig,
    /// How its cache stores K and V (its reservation counts it).
    pub kv_dtype: KvDtype,
    /// Where the engine sends this job's events; dropping the receiver cancels it.
    pub events: UnboundedSender<Event>,
    /// One flag per choice, set by the HTTP side when a `stop` string ended
    /// that choice's text: the engine ends it at its next turn, and a drop
    /// that follows is a finish, not a cancellation.
    pub stopped: Arc<[AtomicBool]>,
    /// Generate `max_tokens` whatever the model says (the `ignore_eos`
    /// extension, for load tests): end-of-turn tokens are sent as text.
    pub ignore_eos: bool,
    /// What is added to the logits before each token is picked.
    pub penalties: Penalties,
    /// The grammar every choice's text must follow (`response_format`, a
    /// forced tool call): each choice starts from a copy; tokens it does not
    /// allow are never picked, and the choice ends where the grammar does.
    pub constraint: Option<Constraint>,
}

/// Changes to the logits before a token is picked: OpenAI's
/// `logit[t] -= presence * (count[t] > 0) + frequency * count[t]` over the
/// tokens generated so far; the repetition penalty of Hugging Face and
/// llama.cpp over the tokens of the prompt and the generation
/// ([`apply_repetition_penalty`]); then `logit[t] += bias[t]` (a bias of
/// -100 bans the token outright).
#[derive(Debug, Clone, PartialEq)]
pub struct Penalties {
    /// `presence_penalty`.
    pub presence: f32,
    /// `frequency_penalty`.
    pub frequency: f32,
    /// `logit_bias`: (token id inside the vocabulary, bias).
    pub logit_bias: Vec<(u32, f32)>,
    /// `repetition_penalty` (> 0; 1 changes nothing).
    pub repetition: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Self { presence: 0.0, frequency: 0.0, logit_bias: Vec::new(), repetition: 1.0 }
    }
}

impl Penalties {
    /// Whether they change nothing.
    pub fn is_none(&self) -> bool {
        self.presence == 0.0 && self.frequency == 0.0 && self.logit_bias.is_empty() && self.repetition == 1.0
    }

    /// Applies them to one row of logits; `counts`: how often each token was
    /// generated; `seen`: the tokens of the prompt and the generation.
    pub fn apply(&self, logits: &mut [f32], counts: &HashMap<u32, u32>, seen: &HashSet<u32>) {
        apply_repetition_penalty(logits, seen.iter().copied(), self.repetition);
        if self.presence != 0.0 || self.frequency != 0.0 {
            for (&t, &c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= self.presence * f32::from(u8::from(c > 0)) + self.frequency * c as f32;
                }
            }
        }
        for &(t, bias) in &self.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if bias <= -100.0 { f32::NEG_INFINITY } else { *l + bias };
            }
        }
    }
}

/// What the engine tells a job's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Admitted: its cache exists and `reserved` bytes are held for it.
    Admitted {
        /// Bytes reserved.
        reserved: u64,
        /// Prompt tokens taken from the context cache (not prefilled).
        cached_tokens: usize,
    },
    /// The prompt tokens' log-probabilities (`Job::prompt_logprobs`), once
    /// the prompt is prefilled: one per prompt token, the first `None`.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// One generated token of choice `index`, with its cache's bytes after it.
    Token {
        /// The choice.
        index: usize,
        /// The token id.
        id: u32,
        /// Its log-probability (`Job::logprobs`).
        logprob: Option<TokenLogprob>,
        /// K/V bytes kept.
        kv_bytes: usize,
        /// K/V bytes allocated.
        kv_allocated_bytes: usize,
    },
    /// Choice `index`'s generation ended.
    Finished {
        /// The choice.
        index: usize,
        /// Why.
        reason: FinishReason,
        /// K/V bytes kept at the end.
        kv_bytes: usize,
        /// K/V bytes allocated at the end.
        kv_allocated_bytes: usize,
    },
    /// The job failed (before admission: refused; later: the model or its
    /// cache failed; the first failure of a job ends all its choices).
    Failed(EngineError),
}

/// Why the engine refused or ended a job; the HTTP layer maps each to a
/// status ([`crate::error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The job's `kv_dtype` cannot be stored on this backend (why).
    KvDtype(String),
    /// The job's reservation exceeds `--kv-memory` even with nothing else running.
    KvMemoryExceeded {
        /// Bytes the job reserves (all its choices).
        needed: u64,
        /// Its prompt tokens.
        prompt_tokens: usize,
        /// Its `max_tokens`.
        max_tokens: usize,
        /// Its cache policy's name.
        policy: String,
        /// Its choices.
        n: usize,
        /// `--kv-memory`.
        limit: u64,
    },
    /// It must wait for memory and `--max-queue` jobs (this many) already wait.
    QueueFull(usize),
    /// Building its cache or running the model failed (what happened).
    Failed(String),
}

/// The HTTP side's handle on the engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    jobs: UnboundedSender<Job>,
    /// The model's cache shape (for the KV arithmetic).
    pub shape: CacheShape,
    /// The model's context, tokens.
    pub context: usize,
    /// The model's vocabulary size (token ids must be below it).
    pub vocab: usize,
    /// The tokens that end a generation.
    pub stop_tokens: Vec<u32>,
}

impl EngineHandle {
    /// Hands a job to the engine; `false` if the engine has stopped.
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }
}

/// Starts the engine thread: it runs `load`, reports back, then serves jobs
/// until every [`EngineHandle`] is dropped and the last sequence has ended.
/// Returns the handle, the tokenizer and the thread, or `load`'s error.
pub fn start<B, E, F>(load: F, config: EngineConfig, metrics: Arc<Metrics>) -> Result<(EngineHandle, Tokenizer, std::thread::JoinHandle<()>), E>
where
    B: Backend,
    E: Send + 'static,
    F: FnOnce() -> Result<Loaded<B>, E> + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(EngineHandle, Tokenizer), E>>();
    let thread = std::thread::Builder::new()
        .name("lava-engine".into())
        .spawn(move || {
            let loaded = match load() {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
            let handle = EngineHandle {
                jobs,
                shape: loaded.model.cache_shape(),
                context: loaded.model.config.max_position_embeddings,
                vocab: loaded.model.config.vocab_size,
                stop_tokens: loaded.stop_tokens.clone(),
            };
            let tokenizer = loaded.tokenizer.clone();
            // Built (the context cache's directory indexed) and published before the first request.
            let engine = Engine::new(loaded, config, metrics);
            engine.publish();
            if ready_tx.send(Ok((handle, tokenizer))).is_err() {
                return;
            }
            engine.run(rx);
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => fatal(e),
    };
    match ready_rx.recv() {
        Ok(Ok((h, t))) => Ok((h, t, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        // The thread ended without a word: it panicked while loading.
        Err(_) => {
            let _ = thread.join();
            fatal(std::io::Error::other("the engine thread stopped while loading the model"))
        }
    }
}

/// The process cannot run without its engine thread: report and exit.
fn fatal(e: std::io::Error) -> ! {
    eprintln!("lava serve: error: cannot start the engine thread: {e}");
    std::process::exit(4)
}

/// A job admitted (one of its choices once prefilled): its cache and where it stands.
struct Sequence<B: Backend> {
    job: Arc<Job>,
    /// The choice (0 while the prompt prefills).
    index: usize,
    cache: Box<dyn KvCache<B>>,
    reserved: u64,
    /// Prompt tokens prefilled so far.
    prefilled: usize,
    sampler: Sampler,
    generated: usize,
    /// How often each token was generated (for the presence and frequency penalties).
    counts: HashMap<u32, u32>,
    /// The tokens of the prompt and the generation (for the repetition penalty).
    seen: HashSet<u32>,
    /// The prompt tokens' log-probabilities so far (`Job::prompt_logprobs`).
    prompt_logprobs: Vec<Option<TokenLogprob>>,
    /// The last token sampled: the input of its next decode step.
    next: u32,
    /// This choice's grammar state (`Job::constraint`).
    constraint: Option<Constraint>,
    /// The tokens its grammar allows next, when computed ahead (while the
    /// model runs the step whose logits they filter).
    mask: Option<Result<Mask, String>>,
    /// Where its state is kept in the context cache on the way (a message
    /// boundary, prefill chunks end there).
    store_at: Option<usize>,
    /// The tokens generated (choice 0 with the context cache: its state at
    /// the end of the answer is kept).
    generated_ids: Vec<u32>,
    /// The length of the turn state it started from (replaced by its own).
    from_turn: Option<usize>,
}

struct Queued {
    job: Job,
    reserved: u64,
}

struct Engine<B: Backend> {
    model: Llama<B>,
    stop_tokens: Vec<u32>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    ledger: Ledger,
    queue: VecDeque<Queued>,
    /// Jobs waiting for another sequence to reach the message boundary
    /// they share: they start from its kept state, not from scratch.
    parked: Vec<Queued>,
    prefilling: VecDeque<Sequence<B>>,
    running: Vec<Sequence<B>>,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    decode_batch: usize,
    contexts: ContextCache,
}

impl<B: Backend> Engine<B> {
    fn new(loaded: Loaded<B>, config: EngineConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            model: loaded.model,
            stop_tokens: loaded.stop_tokens,
            ledger: Ledger::new(config.kv_memory),
            contexts: ContextCache::new(config.context_cache.clone()),
            config,
            metrics,
            queue: VecDeque::new(),
            parked: Vec::new(),
            prefilling: VecDeque::new(),
            running: Vec::new(),
            prefill_tok_s: 0.0,
            decode_tok_s: 0.0,
            decode_batch: 0,
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.parked.is_empty() && self.prefilling.is_empty() && self.running.is_empty()
    }

    fn run(mut self, mut rx: UnboundedReceiver<Job>) {
        let mut open = true;
        loop {
            if self.idle() {
                if !open {
                    break;
                }
                self.publish();
                match rx.blocking_recv() {
                    Some(job) => self.submit(job),
                    None => break,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(job) => self.submit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            self.step();
            self.publish();
        }
        self.publish();
    }

    /// Admits a job at once when no job waits and its reservation fits, else
    /// queues it, or refuses it ([`EngineError`]): if its `kv_dtype` cannot be
    /// stored on this backend or it could never fit, and, only when it cannot
    /// be admitted now, if `--max-queue` jobs already wait.
    fn submit(&mut self, job: Job) {
        if let Err(e) = job.kv_dtype.check::<B>(self.model.cache_shape().head_dim, self.model.device()) {
            let _ = job.events.send(Event::Failed(EngineError::KvDtype(e.to_string())));
            return;
        }
        // Rings of sliding-window layers counted whole, every other layer as the policy keeps it.
        let one = KvBytes::for_model(&self.model, job.kv_dtype).reservation(&job.policy, job.prompt.len(), job.max_tokens);
        let reserved = one.saturating_mul(job.n.max(1) as u64);
        if reserved > self.ledger.limit() {
            let e = EngineError::KvMemoryExceeded {
                needed: reserved,
                prompt_tokens: job.prompt.len(),
                max_tokens: job.max_tokens,
                policy: job.policy.policy.to_string(),
                n: job.n,
                limit: self.ledger.limit(),
            };
            let _ = job.events.send(Event::Failed(e));
            return;
        }
        // Memory that can hold it now admits it now: only a job that must wait
        // takes a place in the queue (one arriving in the same turn as others
        // is not counted against --max-queue while memory admits it).
        if self.queue.is_empty() && self.contexts.yield_to(reserved, &mut self.ledger) {
            self.queue.push_back(Queued { job, reserved });
            self.admit();
            return;
        }
        if self.queue.len() >= self.config.max_queue {
            let _ = job.events.send(Event::Failed(EngineError::QueueFull(self.queue.len())));
            return;
        }
        self.queue.push_back(Queued { job, reserved });
    }

    fn drop_cancelled(&mut self) {
        self.queue.retain(|q| !q.job.events.is_closed());
        self.parked.retain(|q| !q.job.events.is_closed());
        // Gone: the client went away, or a stop string ended the choice.
        let stopped = |s: &Sequence<B>| s.job.stopped.get(s.index).is_some_and(|f| f.load(Ordering::Relaxed));
        let gone = |s: &Sequence<B>| s.job.events.is_closed() || stopped(s);
        let mut ended = Vec::new();
        self.prefilling.retain_mut(|s| {
            let g = gone(s);
            if g {
                ended.push((s.reserved, stopped(s)));
            }
            !g
        });
        self.running.retain_mut(|s| {
            let g = gone(s);
            if g {
                ended.push((s.reserved, stopped(s)));
            }
            !g
        });
        for (reserved, stopped) in ended {
            self.ledger.release(reserved);
            self.metrics.sequence_ended(!stopped);
        }
    }

    fn admit(&mut self) {
        // Parked jobs whose boundary is no longer being prefilled (kept, or
        // its sequence ended) go back to the front, in their order.
        let (waiting, ready): (Vec<Queued>, Vec<Queued>) = std::mem::take(&mut self.parked).into_iter().partition(|q| self.shared_prefill(&q.job));
        self.parked = waiting;
        for q in ready.into_iter().rev() {
            self.queue.push_front(q);
        }
        while let Some(q) = self.queue.front() {
            if self.shared_prefill(&q.job) {
                if let Some(q) = self.queue.pop_front() {
                    self.parked.push(q);
                }
                continue;
            }
            // Kept contexts give way to a request that waits for their memory.
            if !(self.contexts.yield_to(q.reserved, &mut self.ledger) && self.ledger.try_reserve(q.reserved)) {
                break;
            }
            let Some(Queued { mut job, reserved }) = self.queue.pop_front() else { break };
            let max_tokens = job.prompt.len() + job.max_tokens;
            let options = CacheOptions::serving(&job.policy, job.kv_dtype, job.max_tokens);
            let made = catch_unwind(AssertUnwindSafe(|| build_cache(&self.model, &job.policy, max_tokens, options, self.model.device())));
            let (cache, cached_tokens, store_at, from_turn) = match made {
                Ok(Ok(c)) => self.from_context(&job, c),
                Ok(Err(e)) => {
                    self.ledger.release(reserved);
                    let _ = job.events.send(Event::Failed(EngineError::Failed(format!("cannot build the KV cache: {e}"))));
                    continue;
                }
                Err(_) => {
                    self.ledger.release(reserved);
                    let _ = job.events.send(Event::Failed(EngineError::Failed("building the KV cache failed (internal error)".into())));
                    continue;
                }
            };
            let cache = match cache {
                Ok(c) => c,
                Err(e) => {
                    self.ledger.release(reserved);
                    let _ = job.events.send(Event::Failed(EngineError::Failed(e)));
                    continue;
                }
            };
            let _ = job.events.send(Event::Admitted { reserved, cached_tokens });
            let sampler = Sampler::new(job.sampling);
            let seen = if job.penalties.repetition != 1.0 { job.prompt.iter().copied().collect() } else { HashSet::new() };
            let constraint = job.constraint.take();
            self.prefilling.push_back(Sequence {
                job: Arc::new(job),
                index: 0,
                cache,
                reserved,
                prefilled: cached_tokens,
                sampler,
                generated: 0,
                counts: HashMap::new(),
                seen,
                prompt_logprobs: Vec::new(),
                next: 0,
                constraint,
                mask: None,
                store_at,
                generated_ids: Vec::new(),
                from_turn,
            });
        }
    }

    /// Whether a sequence now prefilling will keep, at one of `job`'s
    /// message boundaries, the state `job` would start from (the same
    /// tokens up to it, the same policy): then `job` waits for it rather
    /// than compress the same document a second time.
    fn shared_prefill(&self, job: &Job) -> bool {
        if !self.contexts.enabled() || job.prompt_logprobs.is_some() || job.boundaries.is_empty() {
            return false;
        }
        self.prefilling.iter().any(|s| {
            s.store_at.is_some_and(|b| {
                s.prefilled < b
                    && job.boundaries.contains(&b)
                    && job.prompt.len() > b
                    && s.job.policy == job.policy
                    && s.job.kv_dtype == job.kv_dtype
                    && s.job.prompt[..b] == job.prompt[..b]
            })
        })
    }

    /// The context cache's part in admitting `job` whose new cache is
    /// `cache`: the longest kept state its prompt begins with restored into
    /// it (the tokens it covers), and the message boundary where its state
    /// is to be kept on the way (the longest at least `--context-cache-min`
    /// tokens past the state restored, unless it is a turn state). A job that asks for its prompt's
    /// log-probabilities needs every prompt position: it neither uses nor feeds the cache.
    #[allow(clippy::type_complexity)]
    fn from_context(&mut self, job: &Job, mut cache: Box<dyn KvCache<B>>) -> (Result<Box<dyn KvCache<B>>, String>, usize, Option<usize>, Option<usize>) {
        if !self.contexts.enabled() || job.prompt_logprobs.is_some() {
            return (Ok(cache), 0, None, None);
        }
        let policy = serving_policy(&job.policy, job.kv_dtype);
        let min = self.contexts.min_tokens();
        let counted = job.prompt.len() >= min;
        let hit = self.contexts.lookup(&policy, &job.prompt, counted, &mut self.ledger);
        let (from, from_turn) = match hit {
            Some((len, kind, snapshot)) => match cache.restore(&snapshot) {
                Ok(()) => (len, (kind == Kept::Turn).then_some(len)),
                Err(e) => return (Err(format!("cannot restore the kept context: {e}")), 0, None, None),
            },
            None => (0, None),
        };
        // A conversation that goes on from its turn state keeps its next one at
        // the end of this answer: no state at the boundary after its last answer.
        let store_at = if from_turn.is_some() { None } else { job.boundaries.iter().rev().copied().find(|&b| b >= min && b > from && b < job.prompt.len()) };
        (Ok(cache), from, store_at, from_turn)
    }

    /// The next chunk of `seq`'s prompt: `start..end`.
    fn next_chunk(&self, seq: &Sequence<B>) -> (usize, usize) {
        let start = seq.prefilled;
        let mut end = start.saturating_add(self.config.prefill_chunk.max(1)).min(seq.job.prompt.len());
        if let Some(b) = seq.store_at.filter(|&b| start < b) {
            end = end.min(b);
        }
        (start, end)
    }

    /// One model step (module docs, step 4): mixed when the rows fit.
    fn step(&mut self) {
        let mixed = match self.prefilling.front() {
            // A prompt whose log-probabilities are asked for needs every position's logits.
            Some(seq) if !self.running.is_empty() && seq.job.prompt_logprobs.is_none() => {
                let (start, end) = self.next_chunk(seq);
                end - start + self.running.len() <= self.model.exact_batch_rows()
            }
            _ => false,
        };
        if mixed {
            self.mixed_step();
        } else {
            self.prefill_step();
            self.publish();
            self.decode_step();
        }
    }

    fn prefill_step(&mut self) {
        let Some(mut seq) = self.prefilling.pop_front() else { return };
        let (start, end) = self.next_chunk(&seq);
        let t = Instant::now();
        let model = &self.model;
        let which = if seq.job.prompt_logprobs.is_some() { Logits::All } else { Logits::Last };
        let out = catch_unwind(AssertUnwindSafe(|| model.forward(&seq.job.prompt[start..end], seq.cache.as_mut(), which)));
        let seconds = t.elapsed().as_secs_f64();
        self.metrics.prefill(end - start, seconds);
        self.prefill_tok_s = (end - start) as f64 / seconds.max(1e-9);
        let rows = match read_logits(out, "the model failed on the prompt") {
            Ok(r) if !r.is_empty() && r.len() % (end - start) == 0 => r,
            Ok(r) if !r.is_empty() && which == Logits::Last => r,
            other => {
                let e = other.err().unwrap_or_else(|| "the prefill returned logits of the wrong size".into());
                return self.fail(seq, e);
            }
        };
        let row = match seq.job.prompt_logprobs {
            Some(top) => {
                // Row j gives the distribution of prompt token start + j + 1.
                let vocab = rows.len() / (end - start);
                if start == 0 {
                    seq.prompt_logprobs.push(None);
                }
                for (j, r) in rows.chunks_exact(vocab).enumerate() {
                    if let Some(&next) = seq.job.prompt.get(start + j + 1) {
                        seq.prompt_logprobs.push(Some(token_logprob(r, next, top)));
                    }
                }
                rows[rows.len() - vocab..].to_vec()
            }
            None => rows,
        };
        self.chunk_done(seq, end, &row);
    }

    /// After the chunk ending at `end` of `seq`'s prompt, with the logits of
    /// its last token: back in front of the prefill queue (the oldest prompt
    /// is prefilled first), or, the prompt done, its prompt log-probabilities
    /// sent, its cache copied for each further choice, each choice's first
    /// token sampled and the choices in the decode batch.
    fn chunk_done(&mut self, mut seq: Sequence<B>, end: usize, row: &[f32]) {
        seq.prefilled = end;
        if seq.store_at == Some(end) {
            self.keep(&seq, Kept::Prefix, seq.job.prompt[..end].to_vec());
        }
        if end < seq.job.prompt.len() {
            self.prefilling.push_front(seq);
            return;
        }
        let job = seq.job.clone();
        if job.prompt_logprobs.is_some() {
            let _ = job.events.send(Event::PromptLogprobs(std::mem::take(&mut seq.prompt_logprobs)));
        }
        if job.max_tokens == 0 {
            // Only the prompt was asked for: every choice ends here.
            let stats = seq.cache.stats();
            for index in 0..job.n.max(1) {
                let _ = job.events.send(Event::Finished {
                    index,
                    reason: FinishReason::Length,
                    kv_bytes: stats.retained_bytes,
                    kv_allocated_bytes: stats.allocated_bytes,
                });
            }
            self.ledger.release(seq.reserved);
            self.metrics.sequence_ended(false);
            return;
        }
        let mut choices = Vec::with_capacity(job.n.max(1));
        if job.n > 1 {
            let copies: Option<Vec<Box<dyn KvCache<B>>>> = (1..job.n).map(|_| seq.cache.box_clone()).collect();
            let Some(copies) = copies else {
                return self.fail(seq, "this KV cache cannot be copied for n > 1 choices".into());
            };
            // Each choice holds its share of the reservation (choice 0 the rest).
            let share = seq.reserved / job.n as u64;
            seq.reserved -= share * (job.n as u64 - 1);
            for (i, cache) in copies.into_iter().enumerate() {
                let index = i + 1;
                choices.push(Sequence {
                    job: job.clone(),
                    index,
                    cache,
                    reserved: share,
                    prefilled: seq.prefilled,
                    sampler: Sampler::new(job.sampling.for_choice(index)),
                    generated: 0,
                    counts: HashMap::new(),
                    seen: seq.seen.clone(),
                    prompt_logprobs: Vec::new(),
                    next: 0,
                    constraint: seq.constraint.clone(),
                    mask: None,
                    store_at: None,
                    generated_ids: Vec::new(),
                    from_turn: None,
                });
            }
        }
        choices.insert(0, seq);
        for mut choice in choices {
            let (token, logprob) = match pick(&mut choice, row) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(choice, e);
                    continue;
                }
            };
            if let Some(choice) = self.emit(choice, token, logprob) {
                self.running.push(choice);
            }
        }
    }

    /// The next prefill chunk and the decode batch's tokens in one
    /// [`Llama::forward_runs`]. The step's time is shared between the
    /// prefill and the decode rates by their rows.
    fn mixed_step(&mut self) {
        let Some(mut seq) = self.prefilling.pop_front() else { return };
        let (start, end) = self.next_chunk(&seq);
        let n = self.running.len();
        let tokens: Vec<u32> = self.running.iter().map(|s| s.next).collect();
        let t = Instant::now();
        let model = &self.model;
        let running = &mut self.running;
        let chunk = &seq.job.prompt[start..end];
        let cache = seq.cache.as_mut();
        let out = with_masks_ahead(running, |batch| {
            catch_unwind(AssertUnwindSafe(|| {
                let runs: Vec<&[u32]> = std::iter::once(chunk).chain(tokens.chunks(1)).collect();
                let mut caches: Vec<&mut dyn KvCache<B>> = std::iter::once(cache).chain(batch.into_iter().map(|c| c.as_mut())).collect();
                model.forward_runs(&runs, &mut caches)
            }))
        });
        let seconds = t.elapsed().as_secs_f64();
        let prefill_seconds = seconds * (end - start) as f64 / (end - start + n) as f64;
        self.metrics.prefill(end - start, prefill_seconds);
        self.metrics.decode(n, seconds - prefill_seconds);
        self.metrics.mixed_step();
        self.prefill_tok_s = (end - start) as f64 / prefill_seconds.max(1e-9);
        self.decode_tok_s = n as f64 / (seconds - prefill_seconds).max(1e-9);
        self.decode_batch = n;
        let batch = std::mem::take(&mut self.running);
        let logits = match read_logits(out, "the step failed") {
            Ok(l) if l.len() % (n + 1) == 0 && !l.is_empty() => l,
            other => {
                let e = other.err().unwrap_or_else(|| "the step returned logits of the wrong size".into());
                for s in batch {
                    self.fail(s, e.clone());
                }
                return self.fail(seq, e);
            }
        };
        let vocab = logits.len() / (n + 1);
        self.sample_batch(batch, &logits[vocab..], vocab);
        self.chunk_done(seq, end, &logits[..vocab]);
    }

    fn decode_step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let n = self.running.len();
        let tokens: Vec<u32> = self.running.iter().map(|s| s.next).collect();
        let t = Instant::now();
        let model = &self.model;
        let running = &mut self.running;
        let out = with_masks_ahead(running, |batch| {
            catch_unwind(AssertUnwindSafe(|| {
                let mut caches: Vec<&mut dyn KvCache<B>> = batch.into_iter().map(|c| c.as_mut()).collect();
                model.decode_batch(&tokens, &mut caches)
            }))
        });
        let logits = read_logits(out, "the decode step failed");
        let seconds = t.elapsed().as_secs_f64();
        self.metrics.decode(n, seconds);
        self.decode_tok_s = n as f64 / seconds.max(1e-9);
        self.decode_batch = n;
        let batch = std::mem::take(&mut self.running);
        let logits = match logits {
            Ok(l) if !l.is_empty() && l.len() % n == 0 => l,
            other => {
                let e = other.err().unwrap_or_else(|| "the decode step returned logits of the wrong size".into());
                for seq in batch {
                    self.fail(seq, e.clone());
                }
                return;
            }
        };
        let vocab = logits.len() / n;
        self.sample_batch(batch, &logits, vocab);
    }

    /// Each sequence of the decode batch samples its next token from its row
    /// of `logits` (`[n, vocab]`) and, unless it ended, goes back in the batch.
    fn sample_batch(&mut self, batch: Vec<Sequence<B>>, logits: &[f32], vocab: usize) {
        for (i, mut seq) in batch.into_iter().enumerate() {
            let (token, logprob) = match pick(&mut seq, &logits[i * vocab..(i + 1) * vocab]) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(seq, e);
                    continue;
                }
            };
            if let Some(seq) = self.emit(seq, token, logprob) {
                self.running.push(seq);
            }
        }
    }

    /// Hands a sampled token to its job; returns the sequence if it goes on.
    fn emit(&mut self, mut seq: Sequence<B>, token: u32, logprob: Option<TokenLogprob>) -> Option<Sequence<B>> {
        let stats = seq.cache.stats();
        // A grammar allows a stop token only where its text is complete: it ends the choice even under ignore_eos.
        let stop_tokens: &[u32] = if seq.job.ignore_eos && seq.constraint.is_none() { &[] } else { &self.stop_tokens };
        if let Some(f) = stops_before(token, stop_tokens) {
            self.finish(seq, f.into());
            return None;
        }
        if let Some(c) = seq.constraint.as_mut() {
            if let Err(e) = c.consume(token) {
                self.fail(seq, e);
                return None;
            }
        }
        let sent = seq.job.events.send(Event::Token {
            index: seq.index,
            id: token,
            logprob,
            kv_bytes: stats.retained_bytes,
            kv_allocated_bytes: stats.allocated_bytes,
        });
        seq.generated += 1;
        if seq.index == 0 && self.contexts.enabled() {
            seq.generated_ids.push(token);
        }
        if !(seq.job.penalties.presence == 0.0 && seq.job.penalties.frequency == 0.0) {
            *seq.counts.entry(token).or_default() += 1;
        }
        if seq.job.penalties.repetition != 1.0 {
            seq.seen.insert(token);
        }
        if sent.is_err() {
            // The client is gone: the next turn's sweep would drop it; do it now.
            self.ledger.release(seq.reserved);
            self.metrics.sequence_ended(!seq.job.stopped.get(seq.index).is_some_and(|f| f.load(Ordering::Relaxed)));
            return None;
        }
        if let Some(f) = full_after(seq.generated, seq.job.max_tokens) {
            self.finish(seq, f.into());
            return None;
        }
        seq.next = token;
        Some(seq)
    }

    fn finish(&mut self, seq: Sequence<B>, reason: FinishReason) {
        let stats = seq.cache.stats();
        let _ = seq.job.events.send(Event::Finished {
            index: seq.index,
            reason,
            kv_bytes: stats.retained_bytes,
            kv_allocated_bytes: stats.allocated_bytes,
        });
        self.ledger.release(seq.reserved);
        self.metrics.sequence_ended(false);
        // The conversation's next turn starts from this state: the prompt and
        // the answer's tokens the cache holds (the last one sampled is not in it).
        if seq.index == 0 && self.contexts.enabled() && seq.job.prompt_logprobs.is_none() && seq.job.prompt.len() >= self.contexts.min_tokens() {
            let held = seq.cache.next_position();
            let tokens: Vec<u32> = seq.job.prompt.iter().chain(&seq.generated_ids).copied().take(held).collect();
            if tokens.len() == held {
                self.keep(&seq, Kept::Turn, tokens);
            }
        }
    }

    /// Keeps `seq`'s cache state, the state after `tokens`, in the context cache.
    fn keep(&mut self, seq: &Sequence<B>, kind: Kept, tokens: Vec<u32>) {
        let replaces = if kind == Kept::Turn { seq.from_turn } else { None };
        match seq.cache.snapshot() {
            Ok(snapshot) => self.contexts.insert(kind, serving_policy(&seq.job.policy, seq.job.kv_dtype), tokens, snapshot, replaces, &mut self.ledger),
            Err(e) => eprintln!("lava serve: warning: context cache: cannot keep a state: {e}"),
        }
    }

    fn fail(&mut self, seq: Sequence<B>, message: String) {
        let _ = seq.job.events.send(Event::Failed(EngineError::Failed(message)));
        self.ledger.release(seq.reserved);
        self.metrics.sequence_ended(false);
    }

    fn publish(&self) {
        let mut g = EngineGauges {
            running: self.running.len() + self.prefilling.len(),
            queued: self.queue.len() + self.parked.len(),
            kv_reserved_bytes: self.ledger.reserved(),
            kv_limit_bytes: self.ledger.limit(),
            prefill_tok_s: self.prefill_tok_s,
            decode_tok_s: self.decode_tok_s,
            decode_batch: self.decode_batch,
            ..Default::default()
        };
        for s in self.running.iter().chain(self.prefilling.iter()) {
            let st = s.cache.stats();
            g.kv_allocated_bytes += st.allocated_bytes as u64;
            g.kv_retained_bytes += st.retained_bytes as u64;
        }
        self.metrics.set_gauges(g);
        self.metrics.set_context_cache(self.contexts.stats());
    }
}

/// The sequence's next token from its row of logits, after its penalties
/// and among the tokens its grammar allows, and its log-probability under
/// the raw logits if the job asks for it.
fn pick<B: Backend>(seq: &mut Sequence<B>, row: &[f32]) -> Result<(u32, Option<TokenLogprob>), String> {
    let mask = match seq.constraint.as_mut() {
        Some(c) => Some(seq.mask.take().unwrap_or_else(|| c.mask())?),
        None => None,
    };
    let token = if seq.job.penalties.is_none() && mask.is_none() {
        seq.sampler.sample(row)
    } else {
        let mut filtered = row.to_vec();
        seq.job.penalties.apply(&mut filtered, &seq.counts, &seq.seen);
        if let Some(m) = &mask {
            apply_mask(m, &mut filtered);
            if filtered.iter().all(|l| *l == f32::NEG_INFINITY) {
                return Err("the grammar and logit_bias leave no token to pick: lift the bans".into());
            }
        }
        seq.sampler.sample(&filtered)
    };
    Ok((token, seq.job.logprobs.map(|top| token_logprob(row, token, top))))
}

/// Runs `step` on the batch's caches while another thread computes the
/// grammar masks of its constrained sequences for the logits `step` returns
/// (each grammar has already taken the token `step` feeds), so the masks
/// cost no time of their own when they take no longer than the model.
fn with_masks_ahead<B: Backend, R>(batch: &mut [Sequence<B>], step: impl FnOnce(Vec<&mut Box<dyn KvCache<B>>>) -> R) -> R {
    let mut caches: Vec<&mut Box<dyn KvCache<B>>> = Vec::with_capacity(batch.len());
    let mut constrained: Vec<(&mut Constraint, &mut Option<Result<Mask, String>>)> = Vec::new();
    for s in batch.iter_mut() {
        caches.push(&mut s.cache);
        if let Some(c) = s.constraint.as_mut() {
            constrained.push((c, &mut s.mask));
        }
    }
    if constrained.is_empty() {
        return step(caches);
    }
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            for (c, slot) in constrained {
                *slot = Some(c.mask());
            }
        });
        let out = step(caches);
        // A panicking grammar leaves its masks unset: pick computes them again (and fails the choice cleanly).
        let _ = worker.join();
        out
    })
}

/// The logits of a caught model call as host values, or the error to send
/// (`what` names the call).
fn read_logits<B: Backend>(out: std::thread::Result<Result<burn::tensor::Tensor<B, 2>, lava_llama::ModelError>>, what: &str) -> Result<Vec<f32>, String> {
    match out {
        Ok(Ok(l)) => l.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("cannot read the logits: {e:?}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what} (internal error)")),
    }
}

#[cfg(test)]
mod tests {
    use super::Penalties;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn penalties_follow_openai_and_minus_100_bans() {
        let counts: HashMap<u32, u32> = [(1, 1), (2, 3)].into_iter().collect();
        let none = HashSet::new();
        let p = Penalties { presence: 0.5, frequency: 0.25, logit_bias: vec![(0, 2.0), (3, -100.0)], repetition: 1.0 };
        let mut l = vec![1.0f32, 1.0, 1.0, 50.0];
        p.apply(&mut l, &counts, &none);
        assert_eq!(l, [3.0, 1.0 - 0.5 - 0.25, 1.0 - 0.5 - 0.75, f32::NEG_INFINITY]);
        assert!(Penalties::default().is_none() && !p.is_none());
        // Negative penalties favour what was said; ids past the row are skipped.
        let q = Penalties { presence: -1.0, frequency: 0.0, logit_bias: vec![(9, 1.0)], repetition: 1.0 };
        let mut l = vec![0.0f32; 3];
        q.apply(&mut l, &counts, &none);
        assert_eq!(l, [0.0, 1.0, 1.0]);
        // The repetition penalty over the prompt's and generated tokens, before the bias.
        let seen: HashSet<u32> = [0, 1].into_iter().collect();
        let r = Penalties { repetition: 2.0, logit_bias: vec![(0, 1.0)], ..Penalties::default() };
        let mut l = vec![4.0f32, -4.0, 4.0];
        r.apply(&mut l, &HashMap::new(), &seen);
        assert_eq!(l, [3.0, -8.0, 4.0]);
        assert!(!r.is_none());
    }
}
