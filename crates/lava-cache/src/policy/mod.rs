//! Eviction policies as compositions of three parts (the unified view of the
//! LAVa paper, arXiv 2509.09754):
//!
//! 1. a [`Scorer`] gives every evictable prefix token of every KV head a score
//!    (module [`scorer`]);
//! 2. a [`LayerAllocation`] splits the total budget across layers, giving each
//!    layer its budget `B_l` of tokens beyond the window (module [`layer_budget`]);
//! 3. a [`HeadAllocation`] splits a layer's `H_kv * B_l` tokens across its KV
//!    heads (module [`head_budget`]).
//!
//! Each KV head then keeps its highest-scoring prefix tokens, as many as its head
//! budget allows, plus the whole observation window. The named policies of the
//! paper and its baselines are fixed compositions, listed by [`PolicyName`]; the
//! math is the one of `lava-algorithm.md` (see the crate docs for the few
//! documented deviations from the reference code).
//!
//! Everything that depends on the number of tokens `N` is done on the host with
//! plain Rust, on small `[H, n]` score matrices read back from the backend: Burn's
//! top-k is not available on every backend, and sorting copies to the host anyway.

pub mod head_budget;
pub mod layer_budget;
pub(crate) mod plan;
pub mod scorer;

use std::fmt;
use std::str::FromStr;

use crate::CacheError;

/// Pooling applied along the token axis to the window attention
/// (stride 1, padding `kernel / 2`, output length unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// Max pooling; padding is `-inf`, so it never wins.
    MaxPool,
    /// Average pooling; padding counts as zeros and every window is divided by
    /// the kernel size (PyTorch `count_include_pad=True`).
    AvgPool,
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pooling::MaxPool => "maxpool",
            Pooling::AvgPool => "avgpool",
        })
    }
}

impl FromStr for Pooling {
    type Err = CacheError;

    /// Parses `maxpool` or `avgpool` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "maxpool" | "max" => Ok(Pooling::MaxPool),
            "avgpool" | "avg" => Ok(Pooling::AvgPool),
            other => Err(CacheError::InvalidParameters(format!(
                "unknown pooling '{other}'; expected 'maxpool' or 'avgpool'"
            ))),
        }
    }
}

/// How tokens are scored (part 1 of a policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scorer {
    /// SnapKV: window attention, averaged over the `G` query heads of a KV head,
    /// then pooled ([`scorer::snapkv_scores`]).
    SnapKv,
    /// LAVa: window attention pooled per query head, scaled by the KV head's
    /// largest value L1 norm, then the maximum over the `G` query heads
    /// ([`scorer::lava_scores`]).
    Lava,
    /// H2O-style: cumulative attention that all prompt queries pay to each
    /// token, averaged over the group; no pooling ([`scorer::h2o_scores`]).
    H2o,
    /// StreamingLLM: no attention; the first `sinks` tokens, then the most
    /// recent ones ([`scorer::streaming_scores`]).
    Streaming,
    /// CAKE: mean plus `gamma` times the variance of the window attention
    /// across the window queries, average-pooled (kernel 5), averaged over the
    /// `G` query heads ([`scorer::cake_scores`]).
    Cake,
}

/// How the total budget is split across layers (part 2 of a policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerAllocation {
    /// Every layer gets `B_l = B - w` ([`layer_budget::uniform`]).
    Uniform,
    /// PyramidKV: budgets decrease linearly with depth ([`layer_budget::pyramid`]).
    Pyramid,
    /// LAVa: budgets proportional to each layer's normalised score entropy
    /// ([`layer_budget::entropy`]).
    Entropy,
    /// CAKE: budgets proportional to each layer's preference (entropy times
    /// variance of the window attention), none above the prefix
    /// ([`layer_budget::preference`]).
    Preference,
}

impl LayerAllocation {
    /// Whether the budgets depend on every layer's scores (LAVa entropy,
    /// CAKE preference): the prefill then runs a cascade over the layers.
    pub fn is_dynamic(self) -> bool {
        matches!(self, LayerAllocation::Entropy | LayerAllocation::Preference)
    }
}

/// The floor `f` the adaptive head allocation grants every KV head,
/// `cap_g = round_half_even(count_g * (1 - alpha) + f)` (`lava-algorithm.md` §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloorRule {
    /// `f = int(alpha * B)`, `B` the whole budget *window included*, the same in
    /// every layer: the published LAVa code as run (its per-layer update writes
    /// a misspelled attribute that is never read). A per-layer minimum that damps
    /// the layer allocation and spends about `alpha * w` tokens per head above
    /// the nominal budget.
    Reference,
    /// `f = int(alpha * (B - w))`, the same in every layer: the reference's
    /// per-layer minimum with a model total equal to the nominal
    /// `L * H_kv * (B - w)` up to rounding (`lava-matched`).
    Matched,
    /// `f = floor(alpha * B_l)`, the layer's own budget: what the Ada-KV code
    /// runs (`ada-snapkv`, `ada-pyramidkv`).
    Layer,
}

impl FloorRule {
    /// Every rule, in a stable order.
    pub const ALL: [FloorRule; 3] = [FloorRule::Reference, FloorRule::Matched, FloorRule::Layer];

    /// The canonical name, as parsed by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            FloorRule::Reference => "reference",
            FloorRule::Matched => "matched",
            FloorRule::Layer => "layer",
        }
    }

    /// The floor for budget `budget` (window included), window `window` and
    /// layer budget `layer_budget` (beyond the window), computed in `f64` and
    /// truncated like Python's `int()`.
    pub fn floor(self, alpha: f64, budget: usize, window: usize, layer_budget: usize) -> usize {
        let base = match self {
            FloorRule::Reference => budget,
            FloorRule::Matched => budget.saturating_sub(window),
            FloorRule::Layer => layer_budget,
        };
        // `as usize` truncates toward zero and saturates (NaN and negatives: 0).
        (alpha * base as f64) as usize
    }
}

impl fmt::Display for FloorRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FloorRule {
    type Err = CacheError;

    /// Parses `reference`, `matched` or `layer` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        FloorRule::ALL.into_iter().find(|r| r.as_str() == wanted).ok_or_else(|| {
            CacheError::InvalidParameters(format!(
                "unknown floor rule '{}'; expected 'reference', 'matched' or 'layer'",
                s.trim()
            ))
        })
    }
}

/// How a layer's budget is split across its KV heads (part 3 of a policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadAllocation {
    /// Every KV head keeps its top `B_l` tokens ([`head_budget::uniform`]).
    Uniform,
    /// Ada-KV: a pooled top-`H_kv * B_l` across heads with a per-head floor
    /// ([`head_budget::adaptive`]).
    Adaptive,
}

/// Names of the parts, as written in a composition `scorer+layers+heads`.
macro_rules! part_names {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            /// Every value, in a stable order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used in a composition `scorer+layers+heads`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = CacheError;

            /// Parses the name (case-insensitive).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let wanted = s.trim().to_ascii_lowercase();
                $ty::ALL.iter().copied().find(|v| v.as_str() == wanted).ok_or_else(|| {
                    let names: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                    CacheError::InvalidParameters(format!(
                        concat!("unknown ", $what, " '{}'; expected one of: {}"),
                        s.trim(),
                        names.join(", ")
                    ))
                })
            }
        }
    };
}

part_names!(Scorer, "scorer", SnapKv => "snapkv", Lava => "lava", H2o => "h2o", Streaming => "streaming", Cake => "cake");
part_names!(LayerAllocation, "layer allocation", Uniform => "uniform", Pyramid => "pyramid", Entropy => "entropy", Preference => "preference");
part_names!(HeadAllocation, "head allocation", Uniform => "uniform", Adaptive => "adaptive");

/// A policy's three parts. Written `scorer+layers+heads` (e.g.
/// `lava+pyramid+uniform`), it is also a policy of its own,
/// [`PolicyName::Custom`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Composition {
    /// Token scorer.
    pub scorer: Scorer,
    /// Layer budget allocation.
    pub layers: LayerAllocation,
    /// Head budget allocation.
    pub heads: HeadAllocation,
}

impl fmt::Display for Composition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}+{}", self.scorer, self.layers, self.heads)
    }
}

impl FromStr for Composition {
    type Err = CacheError;

    /// Parses `scorer+layers+heads`, e.g. `snapkv+entropy+adaptive`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('+').collect();
        let [scorer, layers, heads] = parts[..] else {
            return Err(CacheError::InvalidParameters(format!(
                "'{}' is not a composition; write scorer+layers+heads, e.g. lava+pyramid+uniform",
                s.trim()
            )));
        };
        Ok(Composition { scorer: scorer.parse()?, layers: layers.parse()?, heads: heads.parse()? })
    }
}

/// The named policies: fixed compositions of a scorer, a layer allocation and a
/// head allocation, plus any other composition ([`PolicyName::Custom`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyName {
    /// `full`: nothing is evicted.
    Full,
    /// `streaming`: StreamingLLM, attention sinks plus the most recent tokens.
    Streaming,
    /// `h2o`: cumulative attention of all prompt queries, uniform budgets.
    H2o,
    /// `snapkv`: SnapKV scores, uniform layers, uniform heads.
    SnapKv,
    /// `pyramidkv`: SnapKV scores, pyramid layers, uniform heads.
    PyramidKv,
    /// `ada-snapkv`: SnapKV scores, uniform layers, adaptive heads.
    AdaSnapKv,
    /// `ada-pyramidkv`: SnapKV scores, pyramid layers, adaptive heads.
    AdaPyramidKv,
    /// `lava`: LAVa scores, entropy layers, adaptive heads.
    Lava,
    /// `lava-no-layer`: LAVa scores, uniform layers, adaptive heads (ablation).
    LavaNoLayer,
    /// `lava-no-head`: LAVa scores, entropy layers, uniform heads (ablation).
    LavaNoHead,
    /// `lava-matched`: `lava` with the [`FloorRule::Matched`] floor, so that its
    /// total equals the nominal budget (comparison at equal memory).
    LavaMatched,
    /// `cake`: CAKE (mean + variance scores, preference layers, uniform heads).
    Cake,
    /// Any composition, named by its parts (`scorer+layers+heads`); the
    /// parameters a preset would set take their defaults (head floor
    /// [`FloorRule::Layer`]).
    Custom(Composition),
}

impl PolicyName {
    /// Every preset policy, in a stable order ([`PolicyName::Custom`] is not one).
    pub const ALL: [PolicyName; 12] = [
        PolicyName::Full,
        PolicyName::Streaming,
        PolicyName::H2o,
        PolicyName::SnapKv,
        PolicyName::PyramidKv,
        PolicyName::AdaSnapKv,
        PolicyName::AdaPyramidKv,
        PolicyName::Lava,
        PolicyName::LavaNoLayer,
        PolicyName::LavaNoHead,
        PolicyName::LavaMatched,
        PolicyName::Cake,
    ];

    /// The preset's canonical name, as parsed by [`FromStr`] and printed by
    /// [`Display`](fmt::Display); `custom` for a [`PolicyName::Custom`], which
    /// prints as its parts.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Custom(_) => "custom",
            PolicyName::Full => "full",
            PolicyName::Streaming => "streaming",
            PolicyName::H2o => "h2o",
            PolicyName::SnapKv => "snapkv",
            PolicyName::PyramidKv => "pyramidkv",
            PolicyName::AdaSnapKv => "ada-snapkv",
            PolicyName::AdaPyramidKv => "ada-pyramidkv",
            PolicyName::Lava => "lava",
            PolicyName::LavaNoLayer => "lava-no-layer",
            PolicyName::LavaNoHead => "lava-no-head",
            PolicyName::LavaMatched => "lava-matched",
            PolicyName::Cake => "cake",
        }
    }

    /// The policy's parts; `None` for [`PolicyName::Full`], which evicts nothing.
    pub fn composition(self) -> Option<Composition> {
        use HeadAllocation as H;
        use LayerAllocation as L;
        let (scorer, layers, heads) = match self {
            PolicyName::Full => return None,
            PolicyName::Streaming => (Scorer::Streaming, L::Uniform, H::Uniform),
            PolicyName::H2o => (Scorer::H2o, L::Uniform, H::Uniform),
            PolicyName::SnapKv => (Scorer::SnapKv, L::Uniform, H::Uniform),
            PolicyName::PyramidKv => (Scorer::SnapKv, L::Pyramid, H::Uniform),
            PolicyName::AdaSnapKv => (Scorer::SnapKv, L::Uniform, H::Adaptive),
            PolicyName::AdaPyramidKv => (Scorer::SnapKv, L::Pyramid, H::Adaptive),
            PolicyName::Lava => (Scorer::Lava, L::Entropy, H::Adaptive),
            PolicyName::LavaNoLayer => (Scorer::Lava, L::Uniform, H::Adaptive),
            PolicyName::LavaNoHead => (Scorer::Lava, L::Entropy, H::Uniform),
            PolicyName::LavaMatched => (Scorer::Lava, L::Entropy, H::Adaptive),
            PolicyName::Cake => (Scorer::Cake, L::Preference, H::Uniform),
            PolicyName::Custom(parts) => return Some(parts),
        };
        Some(Composition { scorer, layers, heads })
    }

    /// The head floor the policy uses unless [`PolicyConfig::floor_rule`] says
    /// otherwise: the published LAVa code's [`FloorRule::Reference`] for `lava`,
    /// `lava-no-layer` and `lava-no-head` (they are the paper's code),
    /// [`FloorRule::Matched`] for `lava-matched`, and the Ada-KV code's
    /// [`FloorRule::Layer`] for every other policy (only `ada-snapkv` and
    /// `ada-pyramidkv` have adaptive heads among them).
    pub fn default_floor_rule(self) -> FloorRule {
        match self {
            PolicyName::Lava | PolicyName::LavaNoLayer | PolicyName::LavaNoHead => FloorRule::Reference,
            PolicyName::LavaMatched => FloorRule::Matched,
            _ => FloorRule::Layer,
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyName::Custom(parts) => parts.fmt(f),
            preset => f.write_str(preset.as_str()),
        }
    }
}

impl FromStr for PolicyName {
    type Err = CacheError;

    /// Parses a preset's name (case-insensitive, `_` accepted for `-`) or a
    /// composition `scorer+layers+heads` ([`PolicyName::Custom`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('+') {
            return s.parse().map(PolicyName::Custom);
        }
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        PolicyName::ALL.into_iter().find(|p| p.as_str() == wanted).ok_or_else(|| {
            let names: Vec<&str> = PolicyName::ALL.iter().map(|p| p.as_str()).collect();
            CacheError::InvalidParameters(format!(
                "unknown policy '{}'; expected one of: {}, or a composition scorer+layers+heads (e.g. lava+pyramid+uniform)",
                s.trim(),
                names.join(", ")
            ))
        })
    }
}

/// A policy and its parameters. [`PolicyConfig::new`] fills in the reference
/// defaults (`w = 32`, kernel 7, maxpool, `alpha = 0.2`, `beta = 20`, 4 sinks).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Which named policy.
    pub policy: PolicyName,
    /// Budget `B`: tokens kept per KV head per layer, observation window
    /// included (reference configs `c128_w32` mean `B = 128`, `w = 32`).
    /// Adaptive policies move tokens between heads and layers around this mean.
    /// Ignored by `full`.
    pub budget: usize,
    /// Observation window `w`: the last `w` prompt tokens, whose queries score
    /// the others and which are always kept.
    pub window: usize,
    /// Pooling kernel size `k` (odd).
    pub kernel_size: usize,
    /// Pooling kind.
    pub pooling: Pooling,
    /// Floor `alpha` of the adaptive head allocation, in `[0, 1]`.
    pub floor_alpha: f64,
    /// PyramidKV `beta` (`min = (B - w) / beta`), at least 1.
    pub pyramid_beta: usize,
    /// StreamingLLM attention sinks: the first tokens always kept.
    pub sinks: usize,
    /// Head floor of the adaptive head allocation; `None` means the policy's
    /// own ([`PolicyName::default_floor_rule`]). See
    /// [`effective_floor_rule`](Self::effective_floor_rule).
    pub floor_rule: Option<FloorRule>,
}

impl PolicyConfig {
    /// Reference default observation window.
    pub const DEFAULT_WINDOW: usize = 32;
    /// Reference default pooling kernel.
    pub const DEFAULT_KERNEL_SIZE: usize = 7;
    /// Reference default floor `alpha`.
    pub const DEFAULT_FLOOR_ALPHA: f64 = 0.2;
    /// Reference default PyramidKV `beta`.
    pub const DEFAULT_PYRAMID_BETA: usize = 20;
    /// Reference default StreamingLLM sinks.
    pub const DEFAULT_SINKS: usize = 4;

    /// `policy` with budget `budget` and every other parameter at its reference
    /// default (window 32, kernel 7, maxpool, alpha 0.2, beta 20, 4 sinks).
    pub fn new(policy: PolicyName, budget: usize) -> Self {
        Self {
            policy,
            budget,
            window: Self::DEFAULT_WINDOW,
            kernel_size: Self::DEFAULT_KERNEL_SIZE,
            pooling: Pooling::MaxPool,
            floor_alpha: Self::DEFAULT_FLOOR_ALPHA,
            pyramid_beta: Self::DEFAULT_PYRAMID_BETA,
            sinks: Self::DEFAULT_SINKS,
            floor_rule: None,
        }
    }

    /// The head floor rule in force: [`floor_rule`](Self::floor_rule) if set,
    /// else the policy's default.
    pub fn effective_floor_rule(&self) -> FloorRule {
        self.floor_rule.unwrap_or_else(|| self.policy.default_floor_rule())
    }

    /// The floor `f` every KV head gets from the adaptive head allocation in a
    /// layer with budget `layer_budget` (beyond the window), under
    /// [`effective_floor_rule`](Self::effective_floor_rule).
    pub fn head_floor(&self, layer_budget: usize) -> usize {
        self.effective_floor_rule().floor(self.floor_alpha, self.budget, self.window, layer_budget)
    }

    /// Longest prefix `n = N - w` the policy keeps whole (nothing is evicted
    /// while `n` is at most this): `B - w` for every policy but `cake`, which,
    /// as the cakekv code, compresses only prompts longer than `B + w`
    /// (`n > B`).
    pub fn keep_all_prefix(&self) -> usize {
        match self.policy {
            PolicyName::Cake => self.budget,
            _ => self.budget_beyond_window(),
        }
    }

    /// The policy's parts (`None` for `full`).
    pub fn composition(&self) -> Option<Composition> {
        self.policy.composition()
    }

    /// Tokens beyond the window per KV head per layer, `B - w` (0 if `B <= w`,
    /// which [`validate`](Self::validate) rejects).
    pub fn budget_beyond_window(&self) -> usize {
        self.budget.saturating_sub(self.window)
    }

    /// Checks the parameters; the error says what is wrong in one sentence
    /// ([`check`](Self::check) says which field, too).
    ///
    /// Rejected: window 0; kernel size 0 or even; alpha not in `[0, 1]` (or not
    /// finite); beta 0; and, for every policy but `full`, budget 0 or budget
    /// `<=` window; for `streaming`, more sinks than `B - w`.
    pub fn validate(&self) -> Result<(), CacheError> {
        self.check().map_err(|f| CacheError::InvalidParameters(f.message))
    }

    /// [`validate`](Self::validate), naming the field at fault: a caller
    /// with fields of its own (a request's `kv_window`...) maps the name.
    pub fn check(&self) -> Result<(), PolicyFault> {
        let bad = |field: PolicyField, message: String| Err(PolicyFault { field, message });
        if self.window == 0 {
            return bad(PolicyField::Window, "the observation window must hold at least 1 token".into());
        }
        if self.kernel_size == 0 || self.kernel_size % 2 == 0 {
            return bad(
                PolicyField::KernelSize,
                format!("the pooling kernel size must be odd and positive (so pooling keeps the length), got {}", self.kernel_size),
            );
        }
        if !(self.floor_alpha.is_finite() && (0.0..=1.0).contains(&self.floor_alpha)) {
            return bad(PolicyField::FloorAlpha, format!("the floor alpha must lie in [0, 1], got {}", self.floor_alpha));
        }
        if self.pyramid_beta == 0 {
            return bad(PolicyField::PyramidBeta, "the pyramid beta must be at least 1".into());
        }
        if self.policy == PolicyName::Full {
            return Ok(());
        }
        if self.budget == 0 {
            return bad(PolicyField::Budget, format!("the budget of policy '{}' must be positive", self.policy));
        }
        if self.budget <= self.window {
            return bad(
                PolicyField::Budget,
                format!("the budget ({}) must exceed the observation window ({}): it counts the window's tokens too", self.budget, self.window),
            );
        }
        let streaming = self.composition().is_some_and(|c| c.scorer == Scorer::Streaming);
        if streaming && self.sinks > self.budget - self.window {
            return bad(
                PolicyField::Sinks,
                format!("streaming keeps {} sinks but the budget leaves only {} tokens beyond the window", self.sinks, self.budget - self.window),
            );
        }
        Ok(())
    }
}

/// A field of [`PolicyConfig`] that [`PolicyConfig::check`] can find at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    /// `budget` (also when it does not exceed the window, which it includes).
    Budget,
    /// `window`.
    Window,
    /// `kernel_size`.
    KernelSize,
    /// `floor_alpha`.
    FloorAlpha,
    /// `pyramid_beta`.
    PyramidBeta,
    /// `sinks`.
    Sinks,
}

impl PolicyField {
    /// The field's name in [`PolicyConfig`].
    pub fn name(self) -> &'static str {
        match self {
            PolicyField::Budget => "budget",
            PolicyField::Window => "window",
            PolicyField::KernelSize => "kernel_size",
            PolicyField::FloorAlpha => "floor_alpha",
            PolicyField::PyramidBeta => "pyramid_beta",
            PolicyField::Sinks => "sinks",
        }
    }
}

/// What [`PolicyConfig::check`] rejects: the field at fault and one sentence
/// saying what is wrong (the message of [`CacheError::InvalidParameters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFault {
    /// The field at fault.
    pub field: PolicyField,
    /// What is wrong with it.
    pub message: String,
}

impl Default for PolicyConfig {
    /// LAVa with the reference setting `c128_w32_k7_maxpool`.
    fn default() -> Self {
        Self::new(PolicyName::Lava, 128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_field_and_validate_keeps_its_message() {
        let base = PolicyConfig::new(PolicyName::Lava, 128);
        let cases = [
            (PolicyConfig { window: 0, ..base.clone() }, PolicyField::Window),
            (PolicyConfig { kernel_size: 4, ..base.clone() }, PolicyField::KernelSize),
            (PolicyConfig { floor_alpha: 2.0, ..base.clone() }, PolicyField::FloorAlpha),
            (PolicyConfig { pyramid_beta: 0, ..base.clone() }, PolicyField::PyramidBeta),
            (PolicyConfig { budget: 32, ..base.clone() }, PolicyField::Budget),
            (PolicyConfig { policy: PolicyName::Streaming, budget: 35, ..base.clone() }, PolicyField::Sinks),
        ];
        for (c, field) in cases {
            let fault = c.check().expect_err(field.name());
            assert_eq!(fault.field, field);
            assert_eq!(c.validate(), Err(CacheError::InvalidParameters(fault.message)));
        }
        assert_eq!(base.check(), Ok(()));
    }
}
