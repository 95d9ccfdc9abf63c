//! Generation of RULER samples (see the module documentation of [`crate::ruler`]).

use std::collections::HashSet;
use std::path::Path;

use rand::seq::{index::sample as sample_indices, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::words::{adjective_noun_pairs, base_word_pool, extended_word_pool};
use super::{
    CweArgs, FweArgs, HaystackType, NeedleInfo, NeedleType, NiahArgs, RulerSample, RulerTask, TaskConfig, VtArgs,
    NIAH_NEEDLE, NOISE_SENTENCE, VT_ANSWER_PREFIX, VT_TEMPLATE,
};
use crate::error::{EvalError, Result};
use crate::haystack::{load_txt_dir, split_sentences};
use crate::textutil::{fnv1a64, format_template, np_round_linspace, py_split_whitespace, splitmix64};
use crate::tokenize::TokenCounter;

/// Number of depth buckets RULER draws essay insertion depths from
/// (`np.round(np.linspace(0, 100, 40))`).
pub const DEPTH_PERCENTS_COUNT: usize = 40;

/// Token budget of the variable-tracking in-context example (RULER: `max_seq_length=500`).
const VT_ICL_MAX_TOKENS: usize = 500;

/// Maximum number of times the upper bound of the haystack search is doubled.
const MAX_DOUBLINGS: usize = 12;

/// Generates RULER samples. Holds the token counter, the optional essay haystack and the
/// model template; it has no other state, so generation is a pure function of
/// `(task, max_seq_length, seed, index)`.
pub struct RulerGenerator<'a> {
    counter: &'a dyn TokenCounter,
    essay_words: Option<Vec<String>>,
    model_template: String,
    remove_newline_tab: bool,
    key_words: Vec<String>,
    base_words: Vec<String>,
}

impl std::fmt::Debug for RulerGenerator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulerGenerator")
            .field("essay_words", &self.essay_words.as_ref().map(Vec::len))
            .field("model_template", &self.model_template)
            .field("remove_newline_tab", &self.remove_newline_tab)
            .finish_non_exhaustive()
    }
}

/// What one generation attempt at a given haystack size produced.
struct Built {
    /// Full text (model template, task template, answer prefix).
    text: String,
    /// The context part, for depth computation.
    context: String,
    outputs: Vec<String>,
    needles: Vec<NeedleInfo>,
}

impl<'a> RulerGenerator<'a> {
    /// A generator counting tokens with `counter`, with the `base` model template
    /// (`{task_template}`) and no essay haystack.
    pub fn new(counter: &'a dyn TokenCounter) -> Self {
        Self {
            counter,
            essay_words: None,
            model_template: "{task_template}".to_string(),
            remove_newline_tab: false,
            key_words: adjective_noun_pairs(),
            base_words: base_word_pool(),
        }
    }

    /// Uses the concatenated, sorted `.txt` files of `dir` (e.g. the Paul Graham essays) as
    /// the essay haystack.
    pub fn with_essay_dir(self, dir: impl AsRef<Path>) -> Result<Self> {
        let text = load_txt_dir(dir)?;
        Ok(self.with_essay_text(&text))
    }

    /// Uses `text` as the essay haystack (`re.sub(r'\s+', ' ', text).split(' ')`).
    pub fn with_essay_text(mut self, text: &str) -> Self {
        self.essay_words = Some(py_split_whitespace(text).map(str::to_string).collect());
        self
    }

    /// Wraps every task template in a model template containing `{task_template}` (RULER's
    /// `model_template_type`, e.g. `"[INST] {task_template} [/INST]"`). The answer prefix is
    /// appended after the wrapped template, as in RULER.
    pub fn with_model_template(mut self, template: impl Into<String>) -> Result<Self> {
        let template = template.into();
        // validate: exactly the one field
        format_template(&template, &[("task_template", "")])?;
        if !template.contains("{task_template}") {
            return Err(EvalError::Template("model template must contain {task_template}".into()));
        }
        self.model_template = template;
        Ok(self)
    }

    /// RULER's `--remove_newline_tab`: replace newlines and tabs by spaces and collapse
    /// whitespace in the final prompt.
    pub fn with_remove_newline_tab(mut self, on: bool) -> Self {
        self.remove_newline_tab = on;
        self
    }

    /// The seed a sample is generated from: a stable mix of the run `seed`, the task name and
    /// the sample index.
    pub fn sample_seed(seed: u64, task: &str, index: usize) -> u64 {
        splitmix64(seed ^ splitmix64(fnv1a64(task.as_bytes())) ^ splitmix64(index as u64 ^ 0x5bd1_e995))
    }

    /// Generates sample `index` of `task` fitted to `max_seq_length` tokens (including the
    /// task's `tokens_to_generate`).
    pub fn generate(&self, task: RulerTask, max_seq_length: usize, seed: u64, index: usize) -> Result<RulerSample> {
        self.generate_with_config(task.name(), &task.config(), max_seq_length, seed, index)
    }

    /// Generates samples `0..num_samples` of `task`.
    pub fn generate_samples(
        &self,
        task: RulerTask,
        max_seq_length: usize,
        seed: u64,
        num_samples: usize,
    ) -> Result<Vec<RulerSample>> {
        (0..num_samples).map(|i| self.generate(task, max_seq_length, seed, i)).collect()
    }

    /// Generates one sample of a custom task configuration named `name` (the name enters the
    /// seed and the sample's `task` field).
    pub fn generate_with_config(
        &self,
        name: &str,
        config: &TaskConfig,
        max_seq_length: usize,
        seed: u64,
        index: usize,
    ) -> Result<RulerSample> {
        if config.needs_essay() && self.essay_words.as_ref().is_none_or(|w| w.is_empty()) {
            return Err(EvalError::InvalidArgument(format!(
                "task {name} needs an essay haystack (RulerGenerator::with_essay_dir)"
            )));
        }
        let ttg = config.tokens_to_generate();
        let sample_seed = Self::sample_seed(seed, name, index);
        let template = format_template(&self.model_template, &[("task_template", config.template())])?
            + config.answer_prefix();

        let (units, built, _tokens) = match config {
            TaskConfig::Niah(args) => {
                let mut args = *args;
                args.num_needle_k = args.num_needle_k.max(args.num_needle_q);
                validate_niah(name, &args)?;
                let (template, type_v) = niah_template(&template, &args);
                let incremental = match args.type_haystack {
                    HaystackType::Essay => 500,
                    _ if max_seq_length < 4096 => 5,
                    _ => 25,
                };
                let min_units = match args.type_haystack {
                    HaystackType::Essay => 1,
                    _ => args.num_needle_k * args.num_needle_v,
                };
                self.fit(name, max_seq_length, ttg, min_units, incremental, |n| {
                    self.build_niah(&args, &template, &type_v, n, sample_seed)
                })?
            }
            TaskConfig::VariableTracking(args) => {
                validate_vt(name, args)?;
                let icl = if args.add_fewshot { Some(self.vt_icl_example(name, args, seed)?) } else { None };
                let incremental = match args.type_haystack {
                    HaystackType::Essay => 500,
                    _ if max_seq_length < 4096 => 5,
                    _ => 10,
                };
                let min_units = match args.type_haystack {
                    HaystackType::Essay => 1,
                    _ => args.num_hops + 1,
                };
                self.fit(name, max_seq_length, ttg, min_units, incremental, |n| {
                    let mut b = self.build_vt(args, &template, n, sample_seed, false)?;
                    if let Some(icl) = &icl {
                        let mut rng = ChaCha8Rng::seed_from_u64(sample_seed ^ 0x1c1_e8a3);
                        let example = randomize_icl(icl, args.num_hops, &mut rng);
                        let key = VT_TEMPLATE.get(..20).unwrap_or(VT_TEMPLATE);
                        let cutoff = b.text.find(key).unwrap_or(0);
                        b.text = format!("{}{}\n{}", &b.text[..cutoff], example, &b.text[cutoff..]);
                    }
                    Ok(self.clean(b))
                })?
            }
            TaskConfig::CommonWordsExtraction(args) => {
                validate_cwe(name, args)?;
                let min_units = args.num_cw.max(10);
                self.fit(name, max_seq_length, ttg, min_units, 1000, |n| {
                    self.build_cwe(args, &template, n, sample_seed, max_seq_length)
                })?
            }
            TaskConfig::FreqWordsExtraction(args) => {
                let max_len = max_seq_length.saturating_sub(ttg);
                let vocab_size = args.vocab_size.unwrap_or(max_len / 50);
                validate_fwe(name, args, vocab_size)?;
                let probe = (max_len / args.coded_wordlen.max(1)).max(1);
                self.fit(name, max_seq_length, ttg, 1, probe, |n| {
                    self.build_fwe(args, &template, vocab_size, n, sample_seed)
                })?
            }
        };

        let prefix_key: String = config.answer_prefix().chars().take(10).collect();
        let split_at = built.text.rfind(&prefix_key).unwrap_or(built.text.len());
        let length = self.counter.count(&built.text) + ttg;
        let mut needles = built.needles;
        for n in &mut needles {
            if n.occurrences == 1 {
                n.byte_offset = built.text.find(&n.text);
                if !built.context.is_empty() {
                    n.depth = built.context.find(&n.text).map(|o| o as f64 / built.context.len() as f64);
                }
            }
        }
        Ok(RulerSample {
            task: name.to_string(),
            index,
            seed: sample_seed,
            input: built.text[..split_at].to_string(),
            answer_prefix: built.text[split_at..].to_string(),
            outputs: built.outputs,
            length,
            max_seq_length,
            tokens_to_generate: ttg,
            haystack_size: units,
            needles,
        })
    }

    /// Largest haystack size `n >= min_units` whose prompt satisfies
    /// `tokens + ttg <= max_seq_length` (binary search; RULER's bounds heuristic for the
    /// initial upper bound, doubled while it still fits).
    fn fit<F>(
        &self,
        name: &str,
        max_seq_length: usize,
        ttg: usize,
        min_units: usize,
        incremental: usize,
        build: F,
    ) -> Result<(usize, Built, usize)>
    where
        F: Fn(usize) -> Result<Built>,
    {
        let measure = |n: usize| -> Result<(Built, usize)> {
            let b = build(n)?;
            let t = self.counter.count(&b.text) + ttg;
            Ok((b, t))
        };
        let (b0, t0) = measure(min_units)?;
        if t0 > max_seq_length {
            return Err(EvalError::DoesNotFit {
                task: name.to_string(),
                max_seq_length,
                min_tokens: t0,
                tokens_to_generate: ttg,
            });
        }
        let mut best = (min_units, b0, t0);
        let probe_n = incremental.max(min_units).max(1);
        let (_, tp) = measure(probe_n)?;
        let per_unit = (tp.max(1) as f64) / probe_n as f64;
        let estimate = ((max_seq_length as f64 / per_unit) * 3.0) as usize;
        let mut hi = estimate.max(2 * probe_n).max(min_units + 1);
        // make sure `hi` does not fit
        let mut doublings = 0;
        loop {
            let (b, t) = measure(hi)?;
            if t > max_seq_length {
                break;
            }
            best = (hi, b, t);
            if doublings == MAX_DOUBLINGS {
                return Ok(best);
            }
            hi *= 2;
            doublings += 1;
        }
        let mut lo = best.0 + 1;
        let mut hi = hi - 1;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let (b, t) = measure(mid)?;
            if t <= max_seq_length {
                best = (mid, b, t);
                lo = mid + 1;
            } else {
                hi = mid - 1;
            }
        }
        Ok(best)
    }

    /// Applies `remove_newline_tab` if enabled.
    fn clean(&self, mut b: Built) -> Built {
        if self.remove_newline_tab {
            let t = b.text.replace(['\n', '\t'], " ");
            b.text = py_split_whitespace(&t).collect::<Vec<_>>().join(" ");
            let c = b.context.replace(['\n', '\t'], " ");
            b.context = py_split_whitespace(&c).collect::<Vec<_>>().join(" ");
        }
        b
    }

    fn essay_text(&self, n: usize) -> String {
        let words = self.essay_words.as_deref().unwrap_or(&[]);
        if words.is_empty() {
            return String::new();
        }
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&words[i % words.len()]);
        }
        s
    }

    fn random_value(&self, kind: NeedleType, rng: &mut ChaCha8Rng) -> String {
        match kind {
            NeedleType::Numbers => rng.random_range(1_000_000u32..=9_999_999).to_string(),
            NeedleType::Words => self.key_words[rng.random_range(0..self.key_words.len())].clone(),
            NeedleType::Uuids => random_uuid4(rng),
        }
    }

    fn build_niah(&self, args: &NiahArgs, template: &str, type_v: &str, n: usize, seed: u64) -> Result<Built> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let type_v_plural = args.type_needle_v.name();
        // keys, values, needles (distinct keys, distinct values per key)
        let mut keys: Vec<String> = Vec::new();
        let mut values: Vec<Vec<String>> = Vec::new();
        let mut needles: Vec<NeedleInfo> = Vec::new();
        for _ in 0..args.num_needle_k {
            let key = loop {
                let k = self.random_value(args.type_needle_k, &mut rng);
                if !keys.contains(&k) {
                    break k;
                }
            };
            let mut vals: Vec<String> = Vec::new();
            for _ in 0..args.num_needle_v {
                let v = loop {
                    let v = self.random_value(args.type_needle_v, &mut rng);
                    if !vals.contains(&v) {
                        break v;
                    }
                };
                let text = format_template(
                    NIAH_NEEDLE,
                    &[("type_needle_v", type_v_plural), ("key", &key), ("value", &v)],
                )?;
                needles.push(NeedleInfo {
                    text,
                    key: Some(key.clone()),
                    value: Some(v.clone()),
                    occurrences: 1,
                    byte_offset: None,
                    depth: None,
                    depth_percent: None,
                });
                vals.push(v);
            }
            keys.push(key);
            values.push(vals);
        }
        needles.shuffle(&mut rng);
        let query_idx = sample_indices(&mut rng, args.num_needle_k, args.num_needle_q).into_vec();
        let queries: Vec<&str> = query_idx.iter().map(|&i| keys[i].as_str()).collect();
        let outputs: Vec<String> = query_idx.iter().flat_map(|&i| values[i].iter().cloned()).collect();
        let query = match queries.as_slice() {
            [one] => one.to_string(),
            [init @ .., last] => format!("{}, and {}", init.join(", "), last),
            [] => String::new(),
        };

        let context = match args.type_haystack {
            HaystackType::Essay => {
                let text = self.essay_text(n);
                let sents = split_sentences(text.trim());
                // the i-th needle goes to the i-th smallest position
                let mut depths = sample_depths(&mut rng, needles.len())?;
                depths.sort_unstable();
                for (nd, d) in needles.iter_mut().zip(&depths) {
                    nd.depth_percent = Some(*d);
                }
                insert_at_depths(&sents, &needles.iter().map(|n| n.text.as_str()).collect::<Vec<_>>(), &depths)
            }
            HaystackType::Noise | HaystackType::Needle => {
                let mut lines: Vec<String> = if args.type_haystack == HaystackType::Noise {
                    vec![NOISE_SENTENCE.to_string(); n]
                } else {
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let key = loop {
                            let k = self.random_value(args.type_needle_k, &mut rng);
                            if !keys.contains(&k) {
                                break k;
                            }
                        };
                        let value = self.random_value(args.type_needle_v, &mut rng);
                        v.push(format_template(
                            NIAH_NEEDLE,
                            &[("type_needle_v", type_v_plural), ("key", &key), ("value", &value)],
                        )?);
                    }
                    v
                };
                let mut idx = sample_indices(&mut rng, n, needles.len()).into_vec();
                idx.sort_unstable_by(|a, b| b.cmp(a));
                for (i, nd) in idx.iter().zip(&needles) {
                    lines.insert(*i, nd.text.clone());
                }
                lines.join("\n")
            }
        };
        let text = format_template(template, &[("type_needle_v", type_v), ("context", &context), ("query", &query)])?;
        Ok(self.clean(Built { text, context, outputs, needles }))
    }

    /// The VT in-context example: RULER fits it to 500 tokens with 3-letter names and value
    /// 12345, using the bare task template + answer prefix, and appends its answer.
    fn vt_icl_example(&self, name: &str, args: &VtArgs, seed: u64) -> Result<String> {
        let icl_seed = Self::sample_seed(seed, &format!("{name}/icl"), 0);
        let template = format!("{VT_TEMPLATE}{VT_ANSWER_PREFIX}");
        let incremental = if args.type_haystack == HaystackType::Essay { 50 } else { 5 };
        let min_units = if args.type_haystack == HaystackType::Essay { 1 } else { args.num_hops.min(10) + 1 };
        let (_, b, _) = self.fit(&format!("{name} (in-context example)"), VT_ICL_MAX_TOKENS, 0, min_units, incremental, |n| {
            self.build_vt(args, &template, n, icl_seed, true)
        })?;
        Ok(format!("{} {}\n", b.text, b.outputs.join(" ")))
    }

    fn build_vt(&self, args: &VtArgs, template: &str, n: usize, seed: u64, is_icl: bool) -> Result<Built> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = if is_icl { 3 } else { 5 };
        let hops = if is_icl { args.num_hops.min(10) } else { args.num_hops };
        let need = (hops + 1) * args.num_chains;
        if need as f64 > 26f64.powi(k) / 2.0 {
            return Err(EvalError::InvalidArgument(format!("{need} variable names of {k} letters requested")));
        }
        let mut seen = HashSet::new();
        let mut vars: Vec<String> = Vec::with_capacity(need);
        while vars.len() < need {
            let v: String = (0..k).map(|_| char::from(b'A' + rng.random_range(0..26u8))).collect();
            if v != "VAR" && seen.insert(v.clone()) {
                vars.push(v);
            }
        }
        let mut chains: Vec<Vec<String>> = Vec::new();
        let mut needles = Vec::new();
        let mut value0 = String::new();
        for (c, names) in vars.chunks(hops + 1).enumerate() {
            let value = if is_icl { "12345".to_string() } else { rng.random_range(10_000u32..99_999).to_string() };
            if c == 0 {
                value0 = value.clone();
            }
            let mut chain = vec![format!("VAR {} = {}", names[0], value)];
            needles.push(vt_needle(&chain[0], &names[0], &value));
            for j in 0..hops {
                let stmt = format!("VAR {} = VAR {} ", names[j + 1], names[j]);
                needles.push(vt_needle(stmt.trim(), &names[j + 1], &names[j]));
                chain.push(stmt);
            }
            chains.push(chain);
        }
        let context = match args.type_haystack {
            HaystackType::Essay => {
                let text = self.essay_text(n);
                let sents = split_sentences(text.trim());
                let flat = shuffle_sublists_heap(&chains, &mut rng);
                let depths = sample_depths(&mut rng, flat.len())?;
                let stmts: Vec<String> = flat.iter().map(|s| format!("{}.", s.trim())).collect();
                for nd in &mut needles {
                    if let Some(pos) = stmts.iter().position(|s| s.trim_end_matches('.') == nd.text) {
                        nd.depth_percent = Some(sorted(&depths)[pos]);
                        nd.text = stmts[pos].clone();
                    }
                }
                insert_at_depths(&sents, &stmts.iter().map(String::as_str).collect::<Vec<_>>(), &depths)
            }
            _ => {
                let mut sentences: Vec<String> = vec![NOISE_SENTENCE.to_string(); n];
                for chain in &chains {
                    let mut pos = sample_indices(&mut rng, sentences.len(), chain.len()).into_vec();
                    pos.sort_unstable();
                    for (j, p) in pos.iter().enumerate() {
                        sentences.insert(p + j, chain[j].clone());
                    }
                }
                sentences.join("\n")
            }
        };
        let context = context.replace(". \n", ".\n");
        let num_v = (hops + 1).to_string();
        let text = format_template(template, &[("context", &context), ("query", &value0), ("num_v", &num_v)])?;
        let outputs = vars[..hops + 1].to_vec();
        Ok(Built { text, context, outputs, needles })
    }

    fn build_cwe(&self, args: &CweArgs, template: &str, n: usize, seed: u64, max_seq_length: usize) -> Result<Built> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (shot, main) = if max_seq_length < 4096 {
            ((20, 3, 1), (n, 6, 1))
        } else {
            ((40, 10, 3), (n, args.freq_cw, args.freq_ucw))
        };
        let num_cw = args.num_cw.to_string();
        let mut shots = Vec::new();
        for _ in 0..args.num_fewshot {
            let (ctx, ans) = self.cwe_example(&mut rng, shot.0, shot.1, shot.2, args.num_cw);
            let t = format_template(template, &[("num_cw", &num_cw), ("context", &ctx), ("query", "")])?;
            let ans: Vec<String> = ans.iter().enumerate().map(|(i, w)| format!("{}. {}", i + 1, w)).collect();
            shots.push(format!("{t} {}", ans.join(" ")));
        }
        let (context, common) = self.cwe_example(&mut rng, main.0, main.1, main.2, args.num_cw);
        let input = format_template(template, &[("num_cw", &num_cw), ("context", &context), ("query", "")])?;
        let text = format!("{}\n{}", shots.join("\n"), input);
        let needles = common
            .iter()
            .map(|w| NeedleInfo {
                text: w.clone(),
                key: None,
                value: None,
                occurrences: main.1,
                byte_offset: None,
                depth: None,
                depth_percent: None,
            })
            .collect();
        Ok(self.clean(Built { text, context, outputs: common, needles }))
    }

    /// RULER's `get_example`: `(numbered list, common words)`.
    fn cwe_example(
        &self,
        rng: &mut ChaCha8Rng,
        num_words: usize,
        common_repeats: usize,
        uncommon_repeats: usize,
        common_nums: usize,
    ) -> (String, Vec<String>) {
        let extended;
        let pool: &[String] = if num_words <= self.base_words.len() {
            &self.base_words
        } else {
            extended = extended_word_pool(num_words);
            &extended
        };
        let picked: Vec<&str> =
            sample_indices(rng, pool.len(), num_words.min(pool.len())).into_iter().map(|i| pool[i].as_str()).collect();
        let split = common_nums.min(picked.len());
        let (common, uncommon) = picked.split_at(split);
        let mut list: Vec<&str> = Vec::with_capacity(common.len() * common_repeats + uncommon.len() * uncommon_repeats);
        for _ in 0..common_repeats {
            list.extend_from_slice(common);
        }
        for _ in 0..uncommon_repeats {
            list.extend_from_slice(uncommon);
        }
        list.shuffle(rng);
        let context = list.iter().enumerate().map(|(i, w)| format!("{}. {}", i + 1, w)).collect::<Vec<_>>().join(" ");
        (context, common.iter().map(|s| s.to_string()).collect())
    }

    fn build_fwe(&self, args: &FweArgs, template: &str, vocab_size: usize, n: usize, seed: u64) -> Result<Built> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut set = HashSet::new();
        while set.len() < vocab_size {
            let w: String = (0..args.coded_wordlen).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect();
            set.insert(w);
        }
        let mut vocab: Vec<String> = set.into_iter().collect();
        vocab.sort();
        vocab.shuffle(&mut rng);
        vocab[0] = "...".to_string();
        let z = zeta(args.alpha);
        let counts: Vec<usize> = (1..=vocab.len())
            .map(|k| ((n as f64 * (k as f64).powf(-args.alpha)) / z) as usize)
            .collect();
        let mut words: Vec<&str> = Vec::with_capacity(counts.iter().sum());
        for (w, &c) in vocab.iter().zip(&counts) {
            words.extend(std::iter::repeat_n(w.as_str(), c));
        }
        words.shuffle(&mut rng);
        let context = words.join(" ");
        let text = format_template(template, &[("context", &context), ("query", "")])?;
        let outputs: Vec<String> = vocab[1..4].to_vec();
        let needles = (1..4)
            .map(|i| NeedleInfo {
                text: vocab[i].clone(),
                key: None,
                value: None,
                occurrences: counts[i],
                byte_offset: None,
                depth: None,
                depth_percent: None,
            })
            .collect();
        Ok(self.clean(Built { text, context, outputs, needles }))
    }
}

fn vt_needle(text: &str, var: &str, value: &str) -> NeedleInfo {
    NeedleInfo {
        text: text.to_string(),
        key: Some(var.to_string()),
        value: Some(value.to_string()),
        occurrences: 1,
        byte_offset: None,
        depth: None,
        depth_percent: None,
    }
}

fn validate_niah(name: &str, a: &NiahArgs) -> Result<()> {
    if a.num_needle_k == 0 || a.num_needle_v == 0 || a.num_needle_q == 0 {
        return Err(EvalError::InvalidArgument(format!("{name}: needle counts must be positive")));
    }
    if a.type_haystack == HaystackType::Essay && a.num_needle_k * a.num_needle_v > DEPTH_PERCENTS_COUNT {
        return Err(EvalError::InvalidArgument(format!(
            "{name}: at most {DEPTH_PERCENTS_COUNT} needles fit the essay depth buckets"
        )));
    }
    Ok(())
}

fn validate_vt(name: &str, a: &VtArgs) -> Result<()> {
    if a.num_chains == 0 || a.num_hops == 0 {
        return Err(EvalError::InvalidArgument(format!("{name}: num_chains and num_hops must be positive")));
    }
    if a.type_haystack == HaystackType::Needle {
        return Err(EvalError::InvalidArgument(format!("{name}: variable tracking supports noise or essay haystacks")));
    }
    if a.type_haystack == HaystackType::Essay && a.num_chains * (a.num_hops + 1) > DEPTH_PERCENTS_COUNT {
        return Err(EvalError::InvalidArgument(format!("{name}: too many statements for the essay depth buckets")));
    }
    Ok(())
}

fn validate_cwe(name: &str, a: &CweArgs) -> Result<()> {
    if a.num_cw == 0 || a.freq_cw == 0 {
        return Err(EvalError::InvalidArgument(format!("{name}: num_cw and freq_cw must be positive")));
    }
    Ok(())
}

fn validate_fwe(name: &str, a: &FweArgs, vocab_size: usize) -> Result<()> {
    if a.alpha <= 1.0 || !a.alpha.is_finite() {
        return Err(EvalError::InvalidArgument(format!("{name}: alpha must be > 1")));
    }
    if a.coded_wordlen == 0 {
        return Err(EvalError::InvalidArgument(format!("{name}: coded_wordlen must be positive")));
    }
    if vocab_size < 4 {
        return Err(EvalError::InvalidArgument(format!(
            "{name}: vocabulary of {vocab_size} words is too small (max_seq_length too short?)"
        )));
    }
    // enough distinct coded words must exist
    let max_words = 26f64.powi(a.coded_wordlen.min(10) as i32);
    if vocab_size as f64 > max_words / 2.0 {
        return Err(EvalError::InvalidArgument(format!("{name}: vocabulary too large for coded_wordlen")));
    }
    Ok(())
}

/// The NIAH template after RULER's single-needle rewording, and the `type_needle_v` text.
fn niah_template(template: &str, a: &NiahArgs) -> (String, String) {
    let mut type_v = a.type_needle_v.name().to_string();
    if a.num_needle_q * a.num_needle_v == 1 {
        let t = template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer");
        type_v.pop();
        (t, type_v)
    } else {
        (template.to_string(), type_v)
    }
}

/// `random.sample(DEPTHS, k)`.
fn sample_depths(rng: &mut ChaCha8Rng, k: usize) -> Result<Vec<u32>> {
    let depths = np_round_linspace(0.0, 100.0, DEPTH_PERCENTS_COUNT);
    if k > depths.len() {
        return Err(EvalError::InvalidArgument(format!("{k} insertions exceed {DEPTH_PERCENTS_COUNT} depth buckets")));
    }
    Ok(sample_indices(rng, depths.len(), k).into_iter().map(|i| depths[i] as u32).collect())
}

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s
}

/// RULER's essay insertion: positions `int(len(sents) * depth / 100)` sorted; the `i`-th item
/// goes after the `i`-th segment; segments and items are joined with single spaces.
fn insert_at_depths(sents: &[&str], items: &[&str], depths: &[u32]) -> String {
    let n = sents.len();
    let mut positions: Vec<usize> =
        depths.iter().map(|&d| ((n as f64) * (f64::from(d) / 100.0)) as usize).map(|p| p.min(n)).collect();
    positions.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(positions);
    bounds.push(n);
    let mut parts: Vec<String> = Vec::with_capacity(2 * bounds.len());
    for i in 1..bounds.len() {
        parts.push(sents[bounds[i - 1]..bounds[i]].join(" "));
        if let Some(item) = items.get(i - 1) {
            parts.push(item.to_string());
        }
    }
    parts.join(" ")
}

/// RULER's `shuffle_sublists_heap`: a random interleaving that keeps each chain's order.
fn shuffle_sublists_heap(lists: &[Vec<String>], rng: &mut ChaCha8Rng) -> Vec<String> {
    // (priority, list index, element index) of each list's next element
    let mut heads: Vec<(f64, usize, usize)> = (0..lists.len()).map(|i| (rng.random::<f64>(), i, 0)).collect();
    let mut out = Vec::new();
    while !heads.is_empty() {
        let mut best = 0;
        for (h, cand) in heads.iter().enumerate() {
            let b = heads[best];
            if (cand.0, cand.1, cand.2) < (b.0, b.1, b.2) {
                best = h;
            }
        }
        let (_, li, ei) = heads.swap_remove(best);
        out.push(lists[li][ei].clone());
        if ei + 1 < lists[li].len() {
            heads.push((rng.random::<f64>(), li, ei + 1));
        }
    }
    out
}

/// RULER's `randomize_icl`: the last `num_hops + 1` words of the example (its answer) are
/// replaced everywhere by fresh upper-case names of the same length, and the value `12345`
/// by a fresh 5-digit number.
fn randomize_icl(example: &str, num_hops: usize, rng: &mut ChaCha8Rng) -> String {
    let words: Vec<&str> = py_split_whitespace(example).collect();
    let targets: Vec<String> = words[words.len().saturating_sub(num_hops + 1)..].iter().map(|s| s.to_string()).collect();
    let mut out = example.to_string();
    for item in targets {
        let new: String = (0..item.chars().count()).map(|_| char::from(b'A' + rng.random_range(0..26u8))).collect();
        out = out.replace(&item, &new);
    }
    let value = rng.random_range(10_000u32..99_999).to_string();
    out.replace("12345", &value)
}

/// `str(uuid.UUID(int=random.getrandbits(128), version=4))`.
fn random_uuid4(rng: &mut ChaCha8Rng) -> String {
    let mut x: u128 = rng.random();
    x &= !(0xc000u128 << 48);
    x |= 0x8000u128 << 48;
    x &= !(0xf000u128 << 64);
    x |= 4u128 << 76;
    let h = format!("{x:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Riemann zeta for `s > 1` (Euler–Maclaurin with 3 correction terms; ~1e-13 relative).
fn zeta(s: f64) -> f64 {
    const N: usize = 1000;
    let mut sum = 0.0;
    for k in 1..N {
        sum += (k as f64).powf(-s);
    }
    let n = N as f64;
    sum + n.powf(1.0 - s) / (s - 1.0) + 0.5 * n.powf(-s) + s * n.powf(-s - 1.0) / 12.0
        - s * (s + 1.0) * (s + 2.0) * n.powf(-s - 3.0) / 720.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeta_values() {
        assert!((zeta(2.0) - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-12);
        assert!((zeta(4.0) - std::f64::consts::PI.powi(4) / 90.0).abs() < 1e-12);
    }

    #[test]
    fn uuid_format() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let u = random_uuid4(&mut rng);
        assert_eq!(u.len(), 36);
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].chars().next(), Some('8' | '9' | 'a' | 'b')));
    }

    #[test]
    fn single_needle_rewording() {
        let a = NiahArgs {
            type_haystack: HaystackType::Noise,
            type_needle_k: NeedleType::Words,
            type_needle_v: NeedleType::Numbers,
            num_needle_k: 1,
            num_needle_v: 1,
            num_needle_q: 1,
        };
        let full = format!("{}{}", super::super::NIAH_TEMPLATE, super::super::NIAH_ANSWER_PREFIX);
        let (t, v) = niah_template(&full, &a);
        assert_eq!(v, "number");
        assert_eq!(
            t,
            "A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. \
             I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat is the special magic \
             {type_needle_v} for {query} mentioned in the provided text? The special magic {type_needle_v} \
             for {query} mentioned in the provided text is"
        );
    }

    #[test]
    fn essay_insertion_layout() {
        let sents = ["S0.", "S1.", "S2.", "S3."];
        // depth 50 -> position 2; depth 0 -> position 0 (empty first segment, as in RULER)
        let s = insert_at_depths(&sents, &["N1", "N2"], &[50, 0]);
        assert_eq!(s, " N1 S0. S1. N2 S2. S3.");
        let s = insert_at_depths(&sents, &["N"], &[100]);
        assert_eq!(s, "S0. S1. S2. S3. N ");
    }

    #[test]
    fn heap_shuffle_keeps_chain_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let lists = vec![vec!["a1".to_string(), "a2".into(), "a3".into()], vec!["b1".to_string(), "b2".into()]];
        let out = shuffle_sublists_heap(&lists, &mut rng);
        assert_eq!(out.len(), 5);
        let pos = |x: &str| out.iter().position(|y| y == x).unwrap();
        assert!(pos("a1") < pos("a2") && pos("a2") < pos("a3") && pos("b1") < pos("b2"));
    }

    #[test]
    fn icl_randomisation() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let ex = "VAR ABC = 12345\nVAR DEF = VAR ABC \n Answer: they are: ABC DEF\n";
        let out = randomize_icl(ex, 1, &mut rng);
        assert!(!out.contains("ABC") && !out.contains("DEF") && !out.contains("12345"));
        assert_eq!(out.split_whitespace().count(), ex.split_whitespace().count());
    }
}
