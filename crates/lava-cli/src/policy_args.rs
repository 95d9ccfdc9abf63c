//! Command-line options that describe a cache policy.

use clap::Args;
use lava_cache::{FloorRule, KvDtype, PolicyConfig, PolicyName, Pooling};

use crate::error::CliError;

/// `--policy`, `--budget` and the policy parameters (reference defaults).
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Cache policy: full, streaming, h2o, snapkv, pyramidkv, ada-snapkv, ada-pyramidkv, lava, lava-no-layer, lava-no-head, lava-matched, cake;
    /// or any composition scorer+layers+heads (scorers snapkv, lava, h2o, streaming, cake; layers uniform,
    /// pyramid, entropy, preference; heads uniform, adaptive), e.g. lava+pyramid+uniform.
    #[arg(long, default_value = "full")]
    pub policy: String,
    /// Budget B: tokens kept per KV head per layer, window included.
    #[arg(long, default_value_t = 128)]
    pub budget: usize,
    /// Observation window w (the last w prompt tokens, always kept).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Pooling kernel size (odd).
    #[arg(long, default_value_t = 7)]
    pub kernel: usize,
    /// Pooling: maxpool or avgpool.
    #[arg(long, default_value = "maxpool")]
    pub pooling: String,
    /// Head-allocation floor alpha in [0, 1] (Ada-KV, LAVa).
    #[arg(long, default_value_t = 0.2)]
    pub floor_alpha: f64,
    /// PyramidKV beta.
    #[arg(long, default_value_t = 20)]
    pub beta: usize,
    /// Attention sinks kept by streaming.
    #[arg(long, default_value_t = 4)]
    pub sinks: usize,
    /// Head floor of the adaptive head allocation: reference (int(alpha*B), the published
    /// LAVa code), matched (int(alpha*(B-w)), total equal to the nominal budget) or layer
    /// (floor(alpha*B_l), the Ada-KV code). Default: the policy's own (lava, lava-no-layer,
    /// lava-no-head: reference; lava-matched: matched; ada-*: layer).
    #[arg(long)]
    pub floor_rule: Option<String>,
    /// How the cache stores keys and values: f32, f16 (flex or cuda) or q8_0 (ggml's 8-bit
    /// blocks, 34 bytes per 32 values). The prefill scores and attends over the prompt as
    /// computed; decoding and re-scoring read what is stored. Composes with every policy.
    #[arg(long, default_value = "f32")]
    pub kv_dtype: String,
}

/// Parses an optional `--floor-rule` value.
pub fn parse_floor_rule(value: Option<&str>) -> Result<Option<FloorRule>, CliError> {
    value.map(|v| v.parse::<FloorRule>().map_err(CliError::from)).transpose()
}

impl PolicyArgs {
    /// The flags' values when none is given (clap's own defaults).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            policy: PolicyArgs,
        }
        <Only as clap::Parser>::try_parse_from(["lava"]).map(|o| o.policy).unwrap_or_else(|e| unreachable!("the policy flags have defaults: {e}"))
    }

    /// The parsed `--kv-dtype`.
    pub fn kv_dtype(&self) -> Result<KvDtype, CliError> {
        Ok(self.kv_dtype.parse::<KvDtype>()?)
    }

    /// The validated policy configuration.
    pub fn to_config(&self) -> Result<PolicyConfig, CliError> {
        let policy: PolicyName = self.policy.parse()?;
        let pooling: Pooling = self.pooling.parse()?;
        let mut c = PolicyConfig::new(policy, self.budget);
        c.window = self.window;
        c.kernel_size = self.kernel;
        c.pooling = pooling;
        c.floor_alpha = self.floor_alpha;
        c.pyramid_beta = self.beta;
        c.sinks = self.sinks;
        c.floor_rule = parse_floor_rule(self.floor_rule.as_deref())?;
        c.validate()?;
        Ok(c)
    }
}
