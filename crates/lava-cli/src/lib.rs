//! The `lava` command line: `generate`, `ppl`, `select`, `eval`, `bench`, `export-hf`, `serve`.
//!
//! [`main`] parses arguments, runs the command and maps every error to one
//! clear sentence on stderr and an exit code (2 usage, 3 model/data, 4 backend).

pub mod alloc;
pub mod backend;
pub mod bench;
mod commands;
mod context;
pub mod error;
pub mod eval;
pub mod fetch;
pub mod input;
pub mod models;
pub mod policy_args;
pub mod prompt;
pub mod select;
pub mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use backend::BackendKind;
pub use error::CliError;
pub use policy_args::PolicyArgs;

/// Long-context LLM inference with a compressed KV cache (LAVa and baselines), on Burn.
#[derive(Debug, Parser)]
#[command(name = "lava", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by commands that run a model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A known model's name (`lava models` lists them: qwen2.5-coder-0.5b, the default,
    /// qwen2.5-coder-1.5b, smollm2-135m; fetched on first use), a GGUF file or Hugging Face
    /// directory, or `synthetic:NAME`: a known model's shapes and formats with random weights
    /// made in memory (or `synthetic:tiny`), for measuring speed with no file.
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// How a GGUF file's matrices are held: auto (native on flex for a quantized file, else
    /// f32), native (the file's blocks times 8-bit activations, as llama.cpp; flex only) or
    /// f32 (dequantized at load).
    #[arg(long, value_enum, default_value_t = backend::WeightsKind::Auto)]
    pub weights: backend::WeightsKind,
}

/// `lava generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Model and backend.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with_all = ["prompt_file", "context_file", "load_context"])]
    pub prompt: Option<String>,
    /// Read the prompt from a UTF-8 file.
    #[arg(long, conflicts_with_all = ["context_file", "load_context"])]
    pub prompt_file: Option<PathBuf>,
    /// Question-agnostic mode: the context (UTF-8 file) is prefilled and compressed first...
    #[arg(long, conflicts_with = "load_context")]
    pub context_file: Option<PathBuf>,
    /// ...and this question is appended after compression, so the window cannot see it.
    /// Give it several times to answer each question from the same compressed context
    /// (one prefill of the context, then a copy of its cache per question).
    #[arg(long)]
    pub question: Vec<String>,
    /// Write the compressed context (after --context-file is prefilled and compressed,
    /// before any question) to FILE: its kept K/V per layer and KV head, the policy with
    /// every parameter, the KV dtype, its token ids and the model's SHA-256. Written
    /// atomically. With no --question, only the file is written.
    #[arg(long, value_name = "FILE", requires = "context_file")]
    pub save_context: Option<PathBuf>,
    /// Answer each --question from a compressed context written by --save-context,
    /// without prefilling the document again. The file's policy, parameters, KV dtype and
    /// prompt layout (--chat) are used; a file made with another model is refused.
    #[arg(long, value_name = "FILE")]
    pub load_context: Option<PathBuf>,
    /// KV-cache policy and budget.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// Read control tokens (`<|im_start|>`...) written in the prompt as control
    /// tokens; by default they are plain text, so a document cannot forge a turn.
    #[arg(long)]
    pub allow_special: bool,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy, the default).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (with --temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt tokens per prefill step (default: 512 with the full cache; the whole
    /// prompt, compressed once, with a compressing policy). With a compressing
    /// policy, each chunk is compressed back to the budget before the next one, which
    /// bounds the prefill's memory; the prompt plus --max-new-tokens must still fit in
    /// the model's context (longer prompts are refused).
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Decode-time eviction: when generation grows a head past its budget plus this
    /// many tokens, re-score with the recent queries and evict again (same policy).
    #[arg(long)]
    pub decode_budget: Option<usize>,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Also write, to FILE (JSON), what a check across backends compares: the prompt and
    /// generated token ids, the logits each token was chosen from (all of them for a
    /// vocabulary up to 4096, else the 64 largest with their ids), and, for a compressing
    /// policy, the positions each layer's KV heads keep at the end.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<std::path::PathBuf>,
}

/// `lava ppl`.
#[derive(Debug, Clone, Args)]
pub struct PplArgs {
    /// Model and backend.
    #[command(flatten)]
    pub model: ModelArgs,
    /// UTF-8 text file to score.
    #[arg(long)]
    pub text_file: PathBuf,
    /// Score at most this many tokens (from the start of the text).
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// llama-perplexity's method (its `-c N`): cut the text into windows of N
    /// tokens, run each from an empty cache and score the second half of each
    /// window (`--max-tokens` then bounds the text, not the context); for a model
    /// that adds BOS (Gemma, SentencePiece models) the text starts with it and each
    /// window's first token is replaced by it, as llama-perplexity does.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `lava export-hf`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Source GGUF file.
    pub gguf: PathBuf,
    /// Output directory (created), written as a unit: an interrupted export leaves it refused
    /// at load until an export completes, never a mix of two exports; weight shards and an
    /// index of an earlier export are removed.
    pub dir: PathBuf,
}

/// `lava select`.
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Safetensors file with f32 tensors `layers.{l}.q` `[H_q, N, D]`, `layers.{l}.k`, `layers.{l}.v` `[H_kv, N, D]` (RoPE applied).
    #[arg(long)]
    pub qkv: PathBuf,
    /// The policy.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Compute backend for the window attention.
    #[arg(long, value_enum, default_value_t = BackendKind::Ndarray)]
    pub backend: BackendKind,
    /// Print JSON (the default and only format; accepted for clarity).
    #[arg(long)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Mean negative log-likelihood and perplexity of a text.
    Ppl(PplArgs),
    /// Which positions a policy keeps, per layer and KV head, from saved q/k/v tensors (JSON).
    Select(SelectArgs),
    /// Evaluate policies and budgets: niah, ruler, longbench, ppl, fidelity, all, report.
    Eval(eval::EvalArgs),
    /// Write a Hugging Face directory (f32 safetensors, config, tokenizer) from a GGUF file.
    ExportHf(ExportArgs),
    /// Prefill and decode speed, compression overhead and KV memory per policy and budget.
    Bench(bench::BenchArgs),
    /// An OpenAI-compatible HTTP server: many conversations batched in one KV-memory budget.
    Serve(serve::ServeArgs),
    /// The models `--model NAME` knows: size, architecture, context, whether fetched.
    Models(models::ModelsArgs),
}

/// Writes `text` to stdout and flushes it; a failed write (full disk, closed pipe) is an
/// error naming stdout instead of a panic.
pub(crate) fn write_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|e| CliError::io("<stdout>", e))
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Generate(a) => commands::generate(a),
        Command::Ppl(a) => commands::ppl(a),
        Command::ExportHf(a) => commands::export_hf(a),
        Command::Select(a) => commands::select(a),
        Command::Eval(a) => eval::eval(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Models(a) => models::models(a),
    }
}

/// Entry point of the binary: parse, run, report.
pub fn main() -> ExitCode {
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        // A panic is a bug: report it in one line, without a backtrace unless asked.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("lava: internal error: {info}; please report it (RUST_BACKTRACE=1 shows where)");
        }));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lava: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Mean negative log-likelihood (nats) of `ids[1..]` under `model` with a full
/// cache, `chunk` tokens per forward pass (what `lava ppl` reports).
pub fn commands_mean_nll<B: burn::tensor::backend::Backend>(
    model: &lava_llama::Llama<B>,
    ids: &[u32],
    chunk: usize,
) -> Result<f64, CliError> {
    commands::mean_nll(model, ids, chunk)
}
