//! The per-request KV-cache extension fields (`kv_policy`, `kv_budget`,
//! `kv_window`, `kv_kernel`, `kv_pooling`, `kv_floor_alpha`, `kv_beta`,
//! `kv_sinks`, `kv_floor_rule`), over the server's defaults, into a validated
//! [`PolicyConfig`], and `kv_dtype` (how the cache stores K and V) into a
//! [`KvDtype`]. Every error names the field at fault: [`PolicyConfig::check`]
//! names the policy's, mapped here to the request's.

use lava_cache::{FloorRule, KvDtype, PolicyConfig, PolicyField, PolicyName, Pooling};
use serde_json::{Map, Value};

use crate::api::{opt_f64, opt_str, opt_usize};
use crate::error::ApiError;

/// The request's policy: `defaults` with the fields the request sets.
pub fn request_policy(body: &Map<String, Value>, defaults: &PolicyConfig) -> Result<PolicyConfig, ApiError> {
    let mut c = defaults.clone();
    if let Some(name) = opt_str(body, "kv_policy")? {
        let policy: PolicyName = name.parse().map_err(|e| ApiError::invalid("kv_policy", format!("kv_policy: {e}")))?;
        if policy != c.policy {
            // Another policy starts from its own floor rule, not the server's.
            c.floor_rule = None;
        }
        c.policy = policy;
    }
    let budget_set = body.get("kv_budget").is_some_and(|v| !v.is_null());
    if let Some(b) = opt_usize(body, "kv_budget")? {
        c.budget = b;
    }
    if let Some(w) = opt_usize(body, "kv_window")? {
        c.window = w;
    }
    if let Some(k) = opt_usize(body, "kv_kernel")? {
        c.kernel_size = k;
    }
    if let Some(p) = opt_str(body, "kv_pooling")? {
        c.pooling = p.parse::<Pooling>().map_err(|e| ApiError::invalid("kv_pooling", format!("kv_pooling: {e}")))?;
    }
    if let Some(a) = opt_f64(body, "kv_floor_alpha")? {
        c.floor_alpha = a;
    }
    if let Some(b) = opt_usize(body, "kv_beta")? {
        c.pyramid_beta = b;
    }
    if let Some(s) = opt_usize(body, "kv_sinks")? {
        c.sinks = s;
    }
    if let Some(r) = opt_str(body, "kv_floor_rule")? {
        c.floor_rule = Some(r.parse::<FloorRule>().map_err(|e| ApiError::invalid("kv_floor_rule", format!("kv_floor_rule: {e}")))?);
    }
    c.check().map_err(|fault| {
        let field = request_field(fault.field, body, budget_set);
        ApiError::invalid(field, format!("{field}: {}", fault.message))
    })?;
    Ok(c)
}

/// The request field to blame for a fault of `field` in the policy the
/// request and the server's defaults make together: the budget not exceeding
/// the window is the window's fault only when the request set the window and
/// not the budget; sinks the request did not set are its policy's.
fn request_field(field: PolicyField, body: &Map<String, Value>, budget_set: bool) -> &'static str {
    match field {
        PolicyField::Window => "kv_window",
        PolicyField::KernelSize => "kv_kernel",
        PolicyField::FloorAlpha => "kv_floor_alpha",
        PolicyField::PyramidBeta => "kv_beta",
        PolicyField::Budget if !budget_set && body.contains_key("kv_window") => "kv_window",
        PolicyField::Budget => "kv_budget",
        PolicyField::Sinks if body.contains_key("kv_sinks") => "kv_sinks",
        PolicyField::Sinks => "kv_policy",
    }
}

/// The request's `kv_dtype` (`f32`, `f16` or `q8_0`), `None` when it sets
/// none (the server's `--kv-dtype` then holds).
pub fn request_kv_dtype(body: &Map<String, Value>) -> Result<Option<KvDtype>, ApiError> {
    opt_str(body, "kv_dtype")?
        .map(|s| s.parse::<KvDtype>().map_err(|e| ApiError::invalid("kv_dtype", format!("kv_dtype: {e}"))))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn fields_override_the_defaults_and_errors_name_the_field() {
        let d = PolicyConfig::new(PolicyName::Full, 128);
        let c = request_policy(&obj(serde_json::json!({"kv_policy": "lava", "kv_budget": 64})), &d).expect("valid");
        assert_eq!((c.policy, c.budget), (PolicyName::Lava, 64));
        assert_eq!(request_policy(&obj(serde_json::json!({})), &d).expect("defaults"), d);
        let cases = [
            (serde_json::json!({"kv_policy": "nope"}), "kv_policy"),
            (serde_json::json!({"kv_policy": 3}), "kv_policy"),
            (serde_json::json!({"kv_policy": "lava", "kv_budget": 32}), "kv_budget"),
            (serde_json::json!({"kv_policy": "lava", "kv_budget": -1}), "kv_budget"),
            (serde_json::json!({"kv_policy": "lava", "kv_window": 200}), "kv_window"),
            (serde_json::json!({"kv_kernel": 4}), "kv_kernel"),
            (serde_json::json!({"kv_pooling": "median"}), "kv_pooling"),
            (serde_json::json!({"kv_floor_alpha": 1.5}), "kv_floor_alpha"),
            (serde_json::json!({"kv_floor_rule": "x"}), "kv_floor_rule"),
            (serde_json::json!({"kv_policy": "streaming", "kv_budget": 34, "kv_sinks": 9}), "kv_sinks"),
        ];
        for (body, field) in cases {
            let e = request_policy(&obj(body.clone()), &d).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn kv_dtype_is_parsed_and_a_bad_one_names_the_field() {
        assert_eq!(request_kv_dtype(&obj(serde_json::json!({}))).expect("absent"), None);
        assert_eq!(request_kv_dtype(&obj(serde_json::json!({"kv_dtype": null}))).expect("null"), None);
        assert_eq!(request_kv_dtype(&obj(serde_json::json!({"kv_dtype": "q8_0"}))).expect("q8_0"), Some(KvDtype::Q8_0));
        assert_eq!(request_kv_dtype(&obj(serde_json::json!({"kv_dtype": "F16"}))).expect("f16"), Some(KvDtype::F16));
        for bad in [serde_json::json!({"kv_dtype": "int4"}), serde_json::json!({"kv_dtype": 8})] {
            let e = request_kv_dtype(&obj(bad.clone())).expect_err(&bad.to_string());
            assert_eq!(e.param.as_deref(), Some("kv_dtype"), "{bad}: {}", e.message);
            assert_eq!(e.status, 400);
        }
    }
}
