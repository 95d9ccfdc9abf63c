//! RULER synthetic tasks (NVIDIA/RULER `scripts/synthetic.yaml`), generated in Rust with a
//! seeded ChaCha RNG, fitted to a requested token length with any [`TokenCounter`](crate::TokenCounter), and scored
//! with RULER's `string_match_all` (after its `postprocess_pred`).
//!
//! Reproduced from RULER: the task templates and answer prefixes
//! (`scripts/data/synthetic/constants.py`), `tokens_to_generate`, the per-task arguments of
//! `synthetic.yaml`, the needle sentence `One of the special magic {type_needle_v} for {key}
//! is: {value}.`, the three haystack kinds (`noise` sentence repetition, `essay` words with
//! needles inserted at sentence boundaries at depths drawn from
//! `round(linspace(0, 100, 40))`, `needle` distractor sentences), the single-needle template
//! rewording (`Some`→`A`, `are all`→`is`, `are`→`is`, `answers`→`answer`, singular
//! `type_needle_v`), key/value kinds (7-digit numbers, `adjective-noun` words, UUID4s),
//! variable tracking with its in-context example (fitted to 500 tokens, names / value
//! re-randomised per sample), common-words extraction with its few-shot example and
//! `max_seq_length < 4096` variant, frequent-words extraction with zeta-distributed counts,
//! the `model_template` wrapping, the answer-prefix split of the final text (`input` +
//! `answer_prefix` is what the model is given), and the length rule
//! `tokens(input + answer_prefix) + tokens_to_generate <= max_seq_length`, fitted by binary
//! search over the haystack size.
//!
//! Deviations (by design or necessity):
//! * Random streams differ from Python's (`random`/`numpy` Mersenne Twister): the same
//!   distributions, different draws. Every sample is generated from its own seed derived from
//!   `(seed, task name, sample index)`, so any single sample is reproducible on its own.
//! * The binary search runs for every sample (RULER searches once per task and then only
//!   shrinks by fixed steps); frequent-words extraction uses the same binary search instead of
//!   RULER's linear steps of `max_len / 32` words, so prompts are fitted more tightly.
//! * Word lists are our own (see [`words`]); needle keys are kept distinct within a sample and
//!   `needle`-haystack distractors never reuse a real key, so every inserted needle occurs
//!   exactly once; variable names are drawn distinct directly.
//! * Sentence splitting of essays uses [`crate::haystack::split_sentences`] instead of
//!   NLTK Punkt; the essay haystack is the sorted concatenation of a folder's `.txt` files
//!   (RULER's `PaulGrahamEssays.json` is the same essays concatenated).
//! * `remove_newline_tab` (off by default, as in RULER) is applied before measuring the length.
//! * The QA tasks (`qa_1`, `qa_2`) need SQuAD / HotpotQA data and are not implemented.

mod generate;
mod scoring;
pub mod words;

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

pub use generate::{RulerGenerator, DEPTH_PERCENTS_COUNT};
pub use scoring::{aggregate, postprocess_pred, string_match_all, string_match_part};

/// NIAH task template (RULER `constants.py`).
pub const NIAH_TEMPLATE: &str = "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?";
/// NIAH answer prefix.
pub const NIAH_ANSWER_PREFIX: &str = " The special magic {type_needle_v} for {query} mentioned in the provided text are";
/// The needle sentence of the NIAH tasks.
pub const NIAH_NEEDLE: &str = "One of the special magic {type_needle_v} for {key} is: {value}.";
/// The `noise` haystack sentence.
pub const NOISE_SENTENCE: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
/// Variable-tracking task template.
pub const VT_TEMPLATE: &str = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.";
/// Variable-tracking answer prefix.
pub const VT_ANSWER_PREFIX: &str = " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value {query}, they are: ";
/// Common-words-extraction task template.
pub const CWE_TEMPLATE: &str = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?";
/// Common-words-extraction answer prefix.
pub const CWE_ANSWER_PREFIX: &str = " Answer: The top 10 words that appear most often in the list are:";
/// Frequent-words-extraction task template.
pub const FWE_TEMPLATE: &str = "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?";
/// Frequent-words-extraction answer prefix.
pub const FWE_ANSWER_PREFIX: &str = " Answer: According to the coded text above, the three most frequently appeared words are:";

/// The RULER synthetic tasks of `synthetic.yaml` (QA excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RulerTask {
    /// One needle, noise haystack, word key, number value.
    #[serde(rename = "niah_single_1")]
    NiahSingle1,
    /// One needle, essay haystack, word key, number value.
    #[serde(rename = "niah_single_2")]
    NiahSingle2,
    /// One needle, essay haystack, word key, UUID value.
    #[serde(rename = "niah_single_3")]
    NiahSingle3,
    /// Four keys (one queried), essay haystack.
    #[serde(rename = "niah_multikey_1")]
    NiahMultikey1,
    /// One needle among needle-shaped distractors (word keys, number values).
    #[serde(rename = "niah_multikey_2")]
    NiahMultikey2,
    /// One needle among needle-shaped distractors (UUID keys and values).
    #[serde(rename = "niah_multikey_3")]
    NiahMultikey3,
    /// One key with four values, essay haystack.
    #[serde(rename = "niah_multivalue")]
    NiahMultivalue,
    /// Four keys, all four queried, essay haystack.
    #[serde(rename = "niah_multiquery")]
    NiahMultiquery,
    /// Variable tracking: one chain of four hops in noise.
    #[serde(rename = "vt")]
    Vt,
    /// Common words extraction.
    #[serde(rename = "cwe")]
    Cwe,
    /// Frequent (coded) words extraction.
    #[serde(rename = "fwe")]
    Fwe,
}

/// Haystack kind of a NIAH / VT task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaystackType {
    /// Repetitions of [`NOISE_SENTENCE`], one per line.
    Noise,
    /// Words of the essay folder, needles inserted at sentence boundaries.
    Essay,
    /// Needle-shaped distractor sentences with random keys and values, one per line.
    Needle,
}

/// Kind of a needle key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeedleType {
    /// 7-digit numbers.
    Numbers,
    /// `adjective-noun` words.
    Words,
    /// UUID4 strings.
    Uuids,
}

impl NeedleType {
    /// The plural name used in the template (`numbers`, `words`, `uuids`).
    pub fn name(self) -> &'static str {
        match self {
            NeedleType::Numbers => "numbers",
            NeedleType::Words => "words",
            NeedleType::Uuids => "uuids",
        }
    }
}

/// Arguments of a NIAH task (`synthetic.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NiahArgs {
    /// Haystack kind.
    pub type_haystack: HaystackType,
    /// Key kind.
    pub type_needle_k: NeedleType,
    /// Value kind.
    pub type_needle_v: NeedleType,
    /// Number of keys (raised to `num_needle_q` if smaller, as RULER does).
    pub num_needle_k: usize,
    /// Values per key.
    pub num_needle_v: usize,
    /// Keys asked about.
    pub num_needle_q: usize,
}

/// Arguments of variable tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtArgs {
    /// Haystack kind (`noise` or `essay`).
    pub type_haystack: HaystackType,
    /// Number of chains.
    pub num_chains: usize,
    /// Hops per chain.
    pub num_hops: usize,
    /// Whether the in-context example is prepended (RULER: yes).
    pub add_fewshot: bool,
}

/// Arguments of common-words extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CweArgs {
    /// Repetitions of each common word.
    pub freq_cw: usize,
    /// Repetitions of each uncommon word.
    pub freq_ucw: usize,
    /// Number of common words.
    pub num_cw: usize,
    /// Number of few-shot examples.
    pub num_fewshot: usize,
}

/// Arguments of frequent-words extraction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FweArgs {
    /// Zeta distribution exponent.
    pub alpha: f64,
    /// Length of the coded words.
    pub coded_wordlen: usize,
    /// Vocabulary size; `None` = `(max_seq_length - tokens_to_generate) / 50` (RULER's `-1`).
    pub vocab_size: Option<usize>,
}

/// A task's generator and arguments.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", content = "args", rename_all = "snake_case")]
pub enum TaskConfig {
    /// `niah`.
    Niah(NiahArgs),
    /// `variable_tracking`.
    VariableTracking(VtArgs),
    /// `common_words_extraction`.
    CommonWordsExtraction(CweArgs),
    /// `freq_words_extraction`.
    FreqWordsExtraction(FweArgs),
}

impl TaskConfig {
    /// RULER's `tokens_to_generate` of the task family: 128 (niah), 30 (vt), 120 (cwe), 50 (fwe).
    pub fn tokens_to_generate(&self) -> usize {
        match self {
            TaskConfig::Niah(_) => 128,
            TaskConfig::VariableTracking(_) => 30,
            TaskConfig::CommonWordsExtraction(_) => 120,
            TaskConfig::FreqWordsExtraction(_) => 50,
        }
    }

    /// The task family's template (before model-template wrapping).
    pub fn template(&self) -> &'static str {
        match self {
            TaskConfig::Niah(_) => NIAH_TEMPLATE,
            TaskConfig::VariableTracking(_) => VT_TEMPLATE,
            TaskConfig::CommonWordsExtraction(_) => CWE_TEMPLATE,
            TaskConfig::FreqWordsExtraction(_) => FWE_TEMPLATE,
        }
    }

    /// The task family's answer prefix.
    pub fn answer_prefix(&self) -> &'static str {
        match self {
            TaskConfig::Niah(_) => NIAH_ANSWER_PREFIX,
            TaskConfig::VariableTracking(_) => VT_ANSWER_PREFIX,
            TaskConfig::CommonWordsExtraction(_) => CWE_ANSWER_PREFIX,
            TaskConfig::FreqWordsExtraction(_) => FWE_ANSWER_PREFIX,
        }
    }

    /// Whether generating this task needs the essay haystack.
    pub fn needs_essay(&self) -> bool {
        match self {
            TaskConfig::Niah(a) => a.type_haystack == HaystackType::Essay,
            TaskConfig::VariableTracking(a) => a.type_haystack == HaystackType::Essay,
            _ => false,
        }
    }
}

impl RulerTask {
    /// All tasks, in `config_tasks.sh` order.
    pub const ALL: [RulerTask; 11] = [
        RulerTask::NiahSingle1,
        RulerTask::NiahSingle2,
        RulerTask::NiahSingle3,
        RulerTask::NiahMultikey1,
        RulerTask::NiahMultikey2,
        RulerTask::NiahMultikey3,
        RulerTask::NiahMultivalue,
        RulerTask::NiahMultiquery,
        RulerTask::Vt,
        RulerTask::Cwe,
        RulerTask::Fwe,
    ];

    /// The task's name in `synthetic.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            RulerTask::NiahSingle1 => "niah_single_1",
            RulerTask::NiahSingle2 => "niah_single_2",
            RulerTask::NiahSingle3 => "niah_single_3",
            RulerTask::NiahMultikey1 => "niah_multikey_1",
            RulerTask::NiahMultikey2 => "niah_multikey_2",
            RulerTask::NiahMultikey3 => "niah_multikey_3",
            RulerTask::NiahMultivalue => "niah_multivalue",
            RulerTask::NiahMultiquery => "niah_multiquery",
            RulerTask::Vt => "vt",
            RulerTask::Cwe => "cwe",
            RulerTask::Fwe => "fwe",
        }
    }

    /// Parses a `synthetic.yaml` task name.
    pub fn from_name(name: &str) -> Option<RulerTask> {
        RulerTask::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The task's arguments from `synthetic.yaml`.
    pub fn config(self) -> TaskConfig {
        use HaystackType::*;
        use NeedleType::*;
        let niah = |h, k, v, nk, nv, nq| {
            TaskConfig::Niah(NiahArgs {
                type_haystack: h,
                type_needle_k: k,
                type_needle_v: v,
                num_needle_k: nk,
                num_needle_v: nv,
                num_needle_q: nq,
            })
        };
        match self {
            RulerTask::NiahSingle1 => niah(Noise, Words, Numbers, 1, 1, 1),
            RulerTask::NiahSingle2 => niah(Essay, Words, Numbers, 1, 1, 1),
            RulerTask::NiahSingle3 => niah(Essay, Words, Uuids, 1, 1, 1),
            RulerTask::NiahMultikey1 => niah(Essay, Words, Numbers, 4, 1, 1),
            RulerTask::NiahMultikey2 => niah(Needle, Words, Numbers, 1, 1, 1),
            RulerTask::NiahMultikey3 => niah(Needle, Uuids, Uuids, 1, 1, 1),
            RulerTask::NiahMultivalue => niah(Essay, Words, Numbers, 1, 4, 1),
            RulerTask::NiahMultiquery => niah(Essay, Words, Numbers, 1, 1, 4),
            RulerTask::Vt => {
                TaskConfig::VariableTracking(VtArgs { type_haystack: Noise, num_chains: 1, num_hops: 4, add_fewshot: true })
            }
            RulerTask::Cwe => {
                TaskConfig::CommonWordsExtraction(CweArgs { freq_cw: 30, freq_ucw: 3, num_cw: 10, num_fewshot: 1 })
            }
            RulerTask::Fwe => {
                TaskConfig::FreqWordsExtraction(FweArgs { alpha: 2.0, coded_wordlen: 6, vocab_size: None })
            }
        }
    }

    /// RULER's `tokens_to_generate` for the task.
    pub fn tokens_to_generate(self) -> usize {
        self.config().tokens_to_generate()
    }
}

impl std::fmt::Display for RulerTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One inserted item of a generated sample: a needle sentence, a variable assignment, or a
/// word whose frequency is asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeedleInfo {
    /// The exact inserted text (needle sentence, `VAR X = ...` statement, or word).
    pub text: String,
    /// The needle's key (NIAH) or variable name (VT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The needle's value (NIAH) or assigned value / variable (VT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// How many times `text` was inserted into the main context (1 for needles; the
    /// repetition count for CWE / FWE words).
    pub occurrences: usize,
    /// Byte offset of the (single) occurrence in the full prompt (`input + answer_prefix`);
    /// `None` for repeated words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_offset: Option<usize>,
    /// Relative position of the occurrence in the context: 0 = start, 1 = end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
    /// For essay haystacks: the RULER depth bucket (percent) the needle was assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_percent: Option<u32>,
}

/// One generated RULER sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulerSample {
    /// Task name (`synthetic.yaml`).
    pub task: String,
    /// Sample index.
    pub index: usize,
    /// The seed this sample was generated from (derived from the run seed, task and index).
    pub seed: u64,
    /// The prompt without the answer prefix (RULER's `input`).
    pub input: String,
    /// The answer prefix, appended to `input` when prompting.
    pub answer_prefix: String,
    /// Expected outputs; the score is the fraction of them found in the prediction.
    pub outputs: Vec<String>,
    /// `tokens(input + answer_prefix) + tokens_to_generate` (RULER's `length`).
    pub length: usize,
    /// Requested total length.
    pub max_seq_length: usize,
    /// Generation budget of the task.
    pub tokens_to_generate: usize,
    /// Haystack size the prompt was fitted with (sentences, words or list entries).
    pub haystack_size: usize,
    /// What was inserted where.
    pub needles: Vec<NeedleInfo>,
}

impl RulerSample {
    /// The text given to the model: `input + answer_prefix`.
    pub fn prompt(&self) -> String {
        format!("{}{}", self.input, self.answer_prefix)
    }

    /// RULER's score of a prediction: `string_match_all(postprocess_pred(prediction))`, in `[0, 1]`.
    pub fn score(&self, prediction: &str) -> f64 {
        string_match_all(&postprocess_pred(prediction), &self.outputs)
    }
}

/// Writes samples as JSON lines (one sample per line), e.g. to reuse generated prompts.
pub fn save_samples_jsonl(path: impl AsRef<Path>, samples: &[RulerSample]) -> Result<()> {
    let path = path.as_ref();
    let mut out = Vec::new();
    for s in samples {
        serde_json::to_writer(&mut out, s).map_err(|e| EvalError::json(path, None, e))?;
        out.push(b'\n');
    }
    let mut f = fs::File::create(path).map_err(|e| EvalError::io(path, e))?;
    f.write_all(&out).map_err(|e| EvalError::io(path, e))?;
    f.flush().map_err(|e| EvalError::io(path, e))
}

/// Reads samples written by [`save_samples_jsonl`] (blank lines skipped; errors name the line).
pub fn load_samples_jsonl(path: impl AsRef<Path>) -> Result<Vec<RulerSample>> {
    let path = path.as_ref();
    let text = crate::read::text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| EvalError::json(path, Some(i + 1), e))?);
    }
    Ok(out)
}
