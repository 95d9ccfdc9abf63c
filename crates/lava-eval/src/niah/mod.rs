//! Classic needle-in-a-haystack (gkamradt/LLMTest_NeedleInAHaystack, single needle).
//!
//! Reproduced from the reference harness (`llm_needle_haystack_tester.py`, `run.py`):
//! * the default needle (with its surrounding newlines), retrieval question, the
//!   `final_context_length_buffer` of 200 tokens, the grids
//!   `np.round(np.linspace(min, max, n))` for context lengths and depth percents;
//! * the haystack: the `.txt` files of a folder concatenated without separator, repeated
//!   until it has at least the largest context length in tokens (the reference uses `glob`
//!   order; we use sorted file names, for determinism);
//! * the context: the first `context_length` tokens, then
//!   `context_length - buffer` tokens including the needle; the needle goes at
//!   `int(len(context) * depth / 100)` tokens, backed off token by token until the token before
//!   it is a period (the needle is appended at the very end for depth 100).
//!
//! Deviations: we stay in token ids between trimming and insertion (the reference decodes the
//! trimmed context and re-encodes it). A token counts as a "period" if it is one of
//! `encode(".")` (the reference's test) **or** its decoded text, right-trimmed, ends with
//! `.` — needed for SentencePiece tokenizers where a sentence-final `.` is not the same id as
//! a standalone `"."`.
//!
//! The reference scores answers with a GPT-4 judge (1-10). We score by word recall, see
//! [`score_response`].

mod heatmap;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use heatmap::render_heatmap_png;
/// Bitmap-font text helpers, shared with the report's plots.
pub(crate) use heatmap::{draw_text, text_width, write_png};

use crate::error::{EvalError, Result};
use crate::haystack::load_txt_dir;
use crate::textutil::np_round_linspace;
use crate::tokenize::Tokenize;

/// The reference harness's default needle (`run.py`), including its newlines.
pub const NEEDLE: &str = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n";
/// The reference harness's default retrieval question.
pub const RETRIEVAL_QUESTION: &str = "What is the best thing to do in San Francisco?";
/// The part of the needle that answers the question, used for scoring.
pub const EXPECTED_ANSWER: &str = "eat a sandwich and sit in Dolores Park on a sunny day";
/// System prompt of the reference providers.
pub const SYSTEM_PROMPT: &str =
    "You are a helpful AI bot that answers questions for a user. Keep your response short and direct";
/// Appended to the question by the reference providers.
pub const QUESTION_SUFFIX: &str = " Don't give information outside the document or repeat your findings";
/// Answer prefix of the reference's Anthropic prompt.
pub const ANSWER_PREFIX: &str = "Here is the most relevant sentence in the context:";
/// Tokens kept free for the prompt template, question and answer (`final_context_length_buffer`).
pub const DEFAULT_FINAL_CONTEXT_LENGTH_BUFFER: usize = 200;

/// Needle, question, expected answer and buffer of a needle test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NiahConfig {
    /// Text inserted into the haystack.
    pub needle: String,
    /// Question asked after the context.
    pub question: String,
    /// Answer whose words are looked for in the model's response.
    pub expected_answer: String,
    /// Tokens of `context_length` reserved for everything but the context.
    pub final_context_length_buffer: usize,
}

impl Default for NiahConfig {
    fn default() -> Self {
        Self {
            needle: NEEDLE.to_string(),
            question: RETRIEVAL_QUESTION.to_string(),
            expected_answer: EXPECTED_ANSWER.to_string(),
            final_context_length_buffer: DEFAULT_FINAL_CONTEXT_LENGTH_BUFFER,
        }
    }
}

/// `np.round(np.linspace(min, max, num)).astype(int)` context lengths (reference defaults:
/// 1000, 16000, 35).
pub fn context_lengths(min: usize, max: usize, num: usize) -> Vec<usize> {
    np_round_linspace(min as f64, max as f64, num).into_iter().map(|v| v.max(0) as usize).collect()
}

/// Linear depth percents `np.round(np.linspace(min, max, num)).astype(int)` (reference
/// defaults: 0, 100, 35).
pub fn depth_percents(min: f64, max: f64, num: usize) -> Vec<f64> {
    np_round_linspace(min, max, num).into_iter().map(|v| v as f64).collect()
}

/// The haystack as token ids, long enough for the largest context length of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NiahHaystack {
    ids: Vec<u32>,
}

impl NiahHaystack {
    /// Tokenizes `text` repeated as many times as needed for at least `min_tokens` tokens
    /// (the reference's `read_context_files`). Errors on text without tokens.
    pub fn from_text<T: Tokenize + ?Sized>(tokenizer: &T, text: &str, min_tokens: usize) -> Result<Self> {
        let once = tokenizer.encode(text).len();
        if once == 0 {
            return Err(EvalError::InvalidArgument("haystack text has no tokens".into()));
        }
        let mut reps = min_tokens.div_ceil(once).max(1);
        loop {
            // Checked: `min_tokens` is a user number (`--lengths`).
            let bytes = text.len().checked_mul(reps).filter(|&b| b <= isize::MAX as usize).ok_or_else(|| {
                EvalError::InvalidArgument(format!("a haystack of {min_tokens} tokens is larger than memory can hold"))
            })?;
            lava_llama::memory::check_available(&format!("a haystack of {min_tokens} tokens"), bytes as u64)?;
            let ids = tokenizer.encode(&text.repeat(reps));
            if ids.len() >= min_tokens {
                return Ok(Self { ids });
            }
            reps += 1;
        }
    }

    /// [`NiahHaystack::from_text`] of the sorted concatenation of the `.txt` files of `dir`.
    pub fn from_dir<T: Tokenize + ?Sized>(tokenizer: &T, dir: impl AsRef<Path>, min_tokens: usize) -> Result<Self> {
        Self::from_text(tokenizer, &load_txt_dir(dir)?, min_tokens)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens (never true for a constructed haystack).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The token ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// A context with the needle inserted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiahContext {
    /// The decoded context.
    pub context: String,
    /// The requested context length (tokens, including the buffer).
    pub context_length: usize,
    /// The requested depth in percent.
    pub depth_percent: f64,
    /// Tokens of the context including the needle.
    pub context_tokens: usize,
    /// Token index at which the needle starts.
    pub needle_token_index: usize,
    /// `needle_token_index / (context_tokens - needle tokens)`: the depth actually achieved.
    pub actual_depth: f64,
}

/// Builds the context of one grid cell (see the module documentation for the exact rules).
pub fn build_context<T: Tokenize + ?Sized>(
    tokenizer: &T,
    haystack: &NiahHaystack,
    context_length: usize,
    depth_percent: f64,
    config: &NiahConfig,
) -> Result<NiahContext> {
    if !(0.0..=100.0).contains(&depth_percent) {
        return Err(EvalError::InvalidArgument(format!("depth_percent {depth_percent} is not in [0, 100]")));
    }
    let needle = tokenizer.encode(&config.needle);
    let budget = context_length.saturating_sub(config.final_context_length_buffer);
    if budget < needle.len() {
        return Err(EvalError::InvalidArgument(format!(
            "context length {context_length} minus buffer {} leaves no room for the {}-token needle",
            config.final_context_length_buffer,
            needle.len()
        )));
    }
    // encode_and_trim
    let mut ctx: &[u32] = &haystack.ids[..haystack.ids.len().min(context_length)];
    // insert_needle
    if ctx.len() + needle.len() > budget {
        ctx = &ctx[..budget - needle.len()];
    }
    let period_ids: HashSet<u32> = tokenizer.encode(".").into_iter().collect();
    let is_period = |id: u32| period_ids.contains(&id) || tokenizer.decode(&[id]).trim_end().ends_with('.');
    let insertion = if depth_percent == 100.0 {
        ctx.len()
    } else {
        let mut ip = (ctx.len() as f64 * (depth_percent / 100.0)) as usize;
        while ip > 0 && !is_period(ctx[ip - 1]) {
            ip -= 1;
        }
        ip
    };
    let mut ids = Vec::with_capacity(ctx.len() + needle.len());
    ids.extend_from_slice(&ctx[..insertion]);
    ids.extend_from_slice(&needle);
    ids.extend_from_slice(&ctx[insertion..]);
    Ok(NiahContext {
        context: tokenizer.decode(&ids),
        context_length,
        depth_percent,
        context_tokens: ids.len(),
        needle_token_index: insertion,
        actual_depth: if ctx.is_empty() { 0.0 } else { insertion as f64 / ctx.len() as f64 },
    })
}

/// The prompt of a needle test: system message, user message and answer prefix, following
/// the reference's Anthropic prompt (`<context>` tags, question with its suffix). Chat
/// templating is left to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NiahPrompt {
    /// [`SYSTEM_PROMPT`].
    pub system: String,
    /// `<context>\n{context}\n</context>\n\n{question}{QUESTION_SUFFIX}`.
    pub user: String,
    /// [`ANSWER_PREFIX`], to start the assistant's turn with.
    pub answer_prefix: String,
}

impl NiahPrompt {
    /// Builds the prompt for a context.
    pub fn new(context: &str, config: &NiahConfig) -> Self {
        Self {
            system: SYSTEM_PROMPT.to_string(),
            user: format!("<context>\n{context}\n</context>\n\n{}{QUESTION_SUFFIX}", config.question),
            answer_prefix: ANSWER_PREFIX.to_string(),
        }
    }

    /// A single plain-text prompt: `system`, `user` and `answer_prefix` separated by blank lines.
    pub fn to_plain(&self) -> String {
        format!("{}\n\n{}\n\n{}", self.system, self.user, self.answer_prefix)
    }
}

fn lower_words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

/// Word recall of the expected answer in a response: the fraction of the distinct
/// lower-cased words of `expected` (split on non-alphanumeric characters) that occur among
/// the words of `response`. For [`EXPECTED_ANSWER`] these are the 11 words
/// `eat a sandwich and sit in dolores park on sunny day`. 0 for an empty `expected`.
pub fn score_response(response: &str, expected: &str) -> f64 {
    let want: BTreeSet<String> = lower_words(expected).collect();
    if want.is_empty() {
        return 0.0;
    }
    let have: HashSet<String> = lower_words(response).collect();
    want.iter().filter(|w| have.contains(*w)).count() as f64 / want.len() as f64
}

/// One scored grid cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NiahCell {
    /// Context length in tokens.
    pub context_length: usize,
    /// Depth in percent.
    pub depth_percent: f64,
    /// Score in `[0, 1]`.
    pub score: f64,
}

/// Scores of a needle run: rows are depths (ascending), columns context lengths (ascending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiahGrid {
    /// Title of the heatmap.
    pub title: String,
    /// Column values.
    pub context_lengths: Vec<usize>,
    /// Row values.
    pub depth_percents: Vec<f64>,
    /// `scores[depth][length]`: mean score of the cell, `None` if not run.
    pub scores: Vec<Vec<Option<f64>>>,
}

impl NiahGrid {
    /// Builds the grid from cells; repeated cells are averaged. Lengths and depths are the
    /// sorted distinct values present.
    pub fn from_cells(title: impl Into<String>, cells: &[NiahCell]) -> Self {
        let mut lengths: Vec<usize> = cells.iter().map(|c| c.context_length).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut depths: Vec<f64> = cells.iter().map(|c| c.depth_percent).filter(|d| d.is_finite()).collect();
        depths.sort_by(f64::total_cmp);
        depths.dedup();
        let mut sums = vec![vec![(0.0f64, 0usize); lengths.len()]; depths.len()];
        for c in cells {
            let (Ok(col), Some(row)) =
                (lengths.binary_search(&c.context_length), depths.iter().position(|d| *d == c.depth_percent))
            else {
                continue;
            };
            sums[row][col].0 += c.score;
            sums[row][col].1 += 1;
        }
        let scores = sums
            .into_iter()
            .map(|r| r.into_iter().map(|(s, n)| (n > 0).then(|| s / n as f64)).collect())
            .collect();
        Self { title: title.into(), context_lengths: lengths, depth_percents: depths, scores }
    }

    /// Mean over the cells that have a score.
    pub fn mean_score(&self) -> Option<f64> {
        let v: Vec<f64> = self.scores.iter().flatten().flatten().copied().collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Writes the grid as pretty JSON.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let s = serde_json::to_string_pretty(self).map_err(|e| EvalError::json(path, None, e))?;
        lava_llama::hf::write_atomic(path, (s + "\n").as_bytes()).map_err(|e| match e {
            lava_llama::ModelError::Io { path, source } => EvalError::Io { path, source },
            other => EvalError::Model(other),
        })
    }

    /// Reads a grid written by [`NiahGrid::write_json`], checking its shape.
    pub fn read_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let s = crate::read::text(path)?;
        let g: NiahGrid = serde_json::from_str(&s).map_err(|e| EvalError::json(path, None, e))?;
        g.check_shape().map_err(|m| EvalError::invalid(path, None, m))?;
        Ok(g)
    }

    pub(crate) fn check_shape(&self) -> std::result::Result<(), String> {
        if self.scores.len() != self.depth_percents.len()
            || self.scores.iter().any(|r| r.len() != self.context_lengths.len())
        {
            return Err(format!(
                "scores must be {} rows x {} columns",
                self.depth_percents.len(),
                self.context_lengths.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::CharTokenizer;

    #[test]
    fn score_is_word_recall() {
        assert_eq!(score_response("Eat a sandwich and sit in Dolores Park on a sunny day.", EXPECTED_ANSWER), 1.0);
        // 11 distinct words; "a", "sandwich", "in", "dolores", "park" present -> 5/11
        assert!((score_response("a Sandwich in dolores-park", EXPECTED_ANSWER) - 5.0 / 11.0).abs() < 1e-12);
        assert_eq!(score_response("I don't know", EXPECTED_ANSWER), 0.0);
        assert_eq!(score_response("anything", ""), 0.0);
    }

    #[test]
    fn grids_like_reference() {
        assert_eq!(context_lengths(1000, 16000, 35).len(), 35);
        assert_eq!(context_lengths(1000, 16000, 35)[1], 1441);
        let d = depth_percents(0.0, 100.0, 35);
        assert_eq!(d.len(), 35);
        assert_eq!((d[0], d[1], d[34]), (0.0, 3.0, 100.0));
    }

    fn haystack_text() -> String {
        // sentences of 10 chars each: "Sentence0." ... so periods every 10 chars (+1 space)
        (0..200).map(|i| format!("Sentence{}.", i % 10)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn needle_inserted_at_sentence_boundary() {
        let t = CharTokenizer;
        let cfg = NiahConfig { final_context_length_buffer: 20, ..NiahConfig::default() };
        let hay = NiahHaystack::from_text(&t, &haystack_text(), 5000).unwrap();
        assert!(hay.len() >= 5000);
        let needle_len = cfg.needle.chars().count();
        for &depth in &[0.0, 10.0, 37.0, 50.0, 99.0, 100.0] {
            let c = build_context(&t, &hay, 1000, depth, &cfg).unwrap();
            // context + needle = length - buffer
            assert_eq!(c.context_tokens, 1000 - 20);
            assert_eq!(c.context.chars().count(), 980);
            assert_eq!(c.context.matches(cfg.needle.as_str()).count(), 1);
            let before: String = c.context.chars().take(c.needle_token_index).collect();
            if depth == 100.0 {
                // appended at the very end, without backing off (as the reference does)
                assert_eq!(c.needle_token_index, 980 - needle_len);
                continue;
            }
            assert!(before.is_empty() || before.ends_with('.'), "depth {depth}: {before:?}");
            let haystack_part = 980 - needle_len;
            let target = (haystack_part as f64 * depth / 100.0) as usize;
            assert!(c.needle_token_index <= target && target - c.needle_token_index <= 11, "depth {depth}");
        }
        let c = build_context(&t, &hay, 1000, 100.0, &cfg).unwrap();
        assert!(c.context.ends_with(&cfg.needle));
        assert!(build_context(&t, &hay, 50, 50.0, &cfg).is_err());
        assert!(build_context(&t, &hay, 1000, 101.0, &cfg).is_err());
    }

    #[test]
    fn prompt_and_grid() {
        let p = NiahPrompt::new("CTX", &NiahConfig::default());
        assert!(p.user.starts_with("<context>\nCTX\n</context>\n\nWhat is the best thing"));
        assert!(p.to_plain().ends_with(ANSWER_PREFIX));
        let cells = [
            NiahCell { context_length: 2000, depth_percent: 50.0, score: 1.0 },
            NiahCell { context_length: 1000, depth_percent: 0.0, score: 0.5 },
            NiahCell { context_length: 1000, depth_percent: 0.0, score: 0.0 },
        ];
        let g = NiahGrid::from_cells("t", &cells);
        assert_eq!(g.context_lengths, vec![1000, 2000]);
        assert_eq!(g.depth_percents, vec![0.0, 50.0]);
        assert_eq!(g.scores, vec![vec![Some(0.25), None], vec![None, Some(1.0)]]);
        assert_eq!(g.mean_score(), Some(0.625));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.json");
        g.write_json(&p).unwrap();
        assert_eq!(NiahGrid::read_json(&p).unwrap(), g);
        std::fs::write(&p, r#"{"title":"x","context_lengths":[1],"depth_percents":[1.0],"scores":[]}"#).unwrap();
        assert!(NiahGrid::read_json(&p).is_err());
    }
}
