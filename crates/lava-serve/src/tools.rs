//! Tools (function calling) of `/v1/chat/completions`: the `tools` and
//! `tool_choice` fields, the grammar of a forced call, and the calls parsed
//! out of a choice's text.
//!
//! The tools reach the model through its chat template (Qwen2.5's writes
//! them into the system turn and asks for each call as
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`). Under
//! `tool_choice` `required` or a named function the text is constrained to
//! such calls ([`crate::grammar::tool_call_grammar`]), the arguments valid
//! under the function's `parameters`; under `auto` the model chooses and the
//! calls are parsed from what it wrote (a block whose JSON does not parse,
//! or names no given function, stays text); under `none` the tools are not
//! shown to the model at all.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// One function of `tools`.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// `function.name`.
    pub name: String,
    /// `function.parameters` (a JSON schema of the arguments object; absent:
    /// no arguments).
    pub parameters: Value,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// `none`: no call; the tools are not rendered.
    None,
    /// `auto` (the default with tools): the model may call.
    Auto,
    /// `required`: one call or more.
    Required,
    /// `{"type": "function", "function": {"name": ...}}`: a call of that function.
    Named(String),
}

/// The tools of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The `tools` array as given (handed to the chat template).
    pub definitions: Value,
    /// Its functions.
    pub functions: Vec<Function>,
    /// `tool_choice`.
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): more than one call per answer.
    pub parallel: bool,
}

impl Tools {
    /// Whether the model is shown the tools and may call them.
    pub fn active(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The functions a forced call may name (`None` unless forced).
    pub fn forced(&self) -> Option<Vec<(String, Value)>> {
        let schema = |f: &Function| (f.name.clone(), f.parameters.clone());
        match &self.choice {
            ToolChoice::Required => Some(self.functions.iter().map(schema).collect()),
            ToolChoice::Named(n) => Some(self.functions.iter().filter(|f| f.name == *n).map(schema).collect()),
            _ => None,
        }
    }

    /// Whether a forced answer may hold more than one call.
    pub fn many(&self) -> bool {
        self.parallel && self.choice == ToolChoice::Required
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::invalid(field, message)
}

/// OpenAI's rule for function names: 1 to 64 of `a-zA-Z0-9_-`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `tools`, `tool_choice` and `parallel_tool_calls` (`None`: no tools,
/// or none asked for). `functions` and `function_call` (OpenAI's deprecated
/// form) are refused with a 400 that names them and says what to send instead.
pub fn parse(body: &Map<String, Value>) -> Result<Option<Tools>, ApiError> {
    for (old, new) in [("functions", "tools"), ("function_call", "tool_choice")] {
        let asks = match body.get(old) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => s != "none",
            Some(_) => true,
        };
        if asks {
            return Err(ApiError::invalid_code(
                old,
                "unsupported_parameter",
                format!("{old} is OpenAI's deprecated form of {new}, which this server does not take: send {new} instead"),
            ));
        }
    }
    let parallel = match body.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("parallel_tool_calls", "parallel_tool_calls must be a boolean".into())),
    };
    let list = match body.get("tools") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("tools", "tools must be an array of {\"type\": \"function\", \"function\": {...}}".into())),
    };
    let mut functions = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let field = format!("tools[{i}]");
        let Some(t) = t.as_object() else { return Err(invalid(&field, format!("{field} must be an object"))) };
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(&format!("{field}.type"), format!("{field}.type must be \"function\" (the only kind of tool this server calls)")));
        }
        if let Some(k) = t.keys().find(|k| !matches!(k.as_str(), "type" | "function")) {
            return Err(ApiError::invalid_code(&format!("{field}.{k}"), "unsupported_parameter", format!("{field}.{k} is not supported: give type and function")));
        }
        let f = t.get("function").and_then(Value::as_object).ok_or_else(|| invalid(&format!("{field}.function"), format!("{field}.function must be an object with a name")))?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_name(name) {
            return Err(invalid(&format!("{field}.function.name"), format!("{field}.function.name must be 1 to 64 letters, digits, _ or -, got {name:?}")));
        }
        if functions.iter().any(|g: &Function| g.name == name) {
            return Err(invalid(&format!("{field}.function.name"), format!("{field}.function.name {name:?} is given twice")));
        }
        if let Some(k) = f.keys().find(|k| !matches!(k.as_str(), "name" | "description" | "parameters" | "strict")) {
            return Err(ApiError::invalid_code(
                &format!("{field}.function.{k}"),
                "unsupported_parameter",
                format!("{field}.function.{k} is not supported: give name, description, parameters, strict"),
            ));
        }
        if let Some(d) = f.get("description").filter(|d| !d.is_null() && !d.is_string()) {
            return Err(invalid(&format!("{field}.function.description"), format!("{field}.function.description must be a string, got {d}")));
        }
        if let Some(s) = f.get("strict").filter(|s| !s.is_null() && !s.is_boolean()) {
            return Err(invalid(&format!("{field}.function.strict"), format!("{field}.function.strict must be a boolean, got {s}")));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}, "additionalProperties": false}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(invalid(&format!("{field}.function.parameters"), format!("{field}.function.parameters must be a JSON schema object"))),
        };
        functions.push(Function { name: name.to_string(), parameters });
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => return Err(invalid("tool_choice", format!("tool_choice must be none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {other:?}"))),
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(n)) => ToolChoice::Named(n.to_string()),
                _ => return Err(invalid("tool_choice", "tool_choice as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}".into())),
            }
        }
        Some(_) => return Err(invalid("tool_choice", "tool_choice must be a string or an object".into())),
    };
    if functions.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(invalid("tool_choice", "tool_choice asks for a call, but tools gives no function: give tools".into())),
        };
    }
    if let ToolChoice::Named(n) = &choice {
        if !functions.iter().any(|f| f.name == *n) {
            return Err(invalid("tool_choice", format!("tool_choice names the function {n:?}, which tools does not give")));
        }
    }
    Ok(Some(Tools { definitions: Value::Array(list.clone()), functions, choice, parallel }))
}

/// A choice's text split into its tool calls (OpenAI's `tool_calls` entries,
/// ids `call_{id}_{k}`, arguments as a JSON string) and the text outside
/// them (`None` when only whitespace). A `<tool_call>` block whose JSON does
/// not parse, has no `name` among `names` or no object `arguments`, stays text.
/// A text that is nothing but such a call's JSON, without the tags or in one
/// fenced code block (what Qwen2.5-Coder writes), is that call.
pub fn parse_calls(text: &str, names: &[&str], id: &str) -> (Option<String>, Vec<Value>) {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let as_call = |json: &str, k: usize| {
        serde_json::from_str::<Value>(json.trim()).ok().and_then(|v| {
            let name = v.get("name")?.as_str()?;
            let args = v.get("arguments").filter(|a| a.is_object())?;
            names.contains(&name).then(|| {
                json!({"id": format!("call_{id}_{k}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}})
            })
        })
    };
    if !text.contains(OPEN) {
        let t = text.trim();
        let fenced = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).and_then(|t| t.strip_suffix("```"));
        if let Some(call) = as_call(fenced.unwrap_or(t), 0) {
            return (None, vec![call]);
        }
    }
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        let call = as_call(&after[..end], calls.len());
        match call {
            Some(c) => {
                content.push_str(&rest[..at]);
                calls.push(c);
            }
            None => content.push_str(&rest[..at + OPEN.len() + end + CLOSE.len()]),
        }
        rest = &after[end + CLOSE.len()..];
    }
    content.push_str(rest);
    let content = if content.trim().is_empty() { None } else { Some(content.trim().to_string()) };
    (content, calls)
}

/// An assistant message's `tool_calls` (OpenAI's form, arguments as a JSON
/// string) as the chat template reads them (arguments as a JSON object);
/// errors name `messages[i].tool_calls[j]...`.
pub fn history_calls(calls: &[Value], field: &str) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let at = format!("{field}[{j}]");
        let f = c
            .as_object()
            .filter(|o| o.get("type").and_then(Value::as_str).is_none_or(|t| t == "function"))
            .and_then(|o| o.get("function"))
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(&at, format!("{at} must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{at}.function.name"), format!("{at}.function.name must be a string")))?;
        let args = match f.get("arguments") {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| invalid(&format!("{at}.function.arguments"), format!("{at}.function.arguments must be a JSON object written as a string")))?,
            Some(o @ Value::Object(_)) => o.clone(),
            _ => return Err(invalid(&format!("{at}.function.arguments"), format!("{at}.function.arguments must be a JSON object written as a string"))),
        };
        out.push(json!({"type": "function", "function": {"name": name, "arguments": args}}));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn tools_parse_and_bad_ones_are_named() {
        let f = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let t = parse(&obj(json!({"tools": f}))).expect("valid").expect("tools");
        assert_eq!(t.choice, ToolChoice::Auto);
        assert_eq!(t.functions[0].name, "get_weather");
        assert!(t.parallel && t.active() && t.forced().is_none());
        let t = parse(&obj(json!({"tools": f, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))).expect("valid").expect("tools");
        assert_eq!(t.forced().map(|v| v.len()), Some(1));
        assert!(!t.many());
        assert!(parse(&obj(json!({"tools": [], "tool_choice": "none"}))).expect("valid").is_none());
        assert!(!parse(&obj(json!({"tools": f, "tool_choice": "none"}))).expect("valid").expect("tools").active());
        for (body, field) in [
            (json!({"tools": "x"}), "tools"),
            (json!({"tools": [1]}), "tools[0]"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}), "tools[0].function.name"),
            (json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}), "tools[0].function.parameters"),
            (json!({"tools": [{"type": "function", "function": {"name": "f", "extra": 3}}]}), "tools[0].function.extra"),
            (json!({"tools": f, "tool_choice": "sometimes"}), "tool_choice"),
            (json!({"tools": f, "tool_choice": {"type": "function", "function": {"name": "other"}}}), "tool_choice"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"tools": f, "parallel_tool_calls": "yes"}), "parallel_tool_calls"),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "auto"}), "function_call"),
        ] {
            let e = parse(&obj(body.clone())).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
        }
    }

    #[test]
    fn calls_are_parsed_out_of_the_text() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = parse_calls(text, &["get_weather"], "x");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["id"], "call_x_0");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(serde_json::from_str::<Value>(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap(), json!({"city": "Paris"}));
        // The unknown function's block stays text.
        assert_eq!(content.as_deref(), Some("Let me look.\n\n<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>"));
        let (content, calls) = parse_calls("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>", &["f"], "y");
        assert_eq!((content, calls.len()), (None, 1));
        // Bare JSON of a call, as small models write it: that call; of an unknown function: text.
        let bare = "{\"name\": \"f\", \"arguments\": {\"x\": 1}}";
        assert_eq!(parse_calls(bare, &["f"], "z").1.len(), 1);
        assert_eq!(parse_calls(&format!("```json\n{bare}\n```"), &["f"], "z").1.len(), 1);
        assert_eq!(parse_calls(&format!("Here:\n```json\n{bare}\n```"), &["f"], "z").1.len(), 0);
        assert_eq!(parse_calls(bare, &["g"], "z"), (Some(bare.to_string()), vec![]));
        let (content, calls) = parse_calls("no calls <tool_call> {bad", &["f"], "y");
        assert_eq!((content.as_deref(), calls.len()), (Some("no calls <tool_call> {bad"), 0));
        let h = history_calls(&[json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}})], "m").expect("valid");
        assert_eq!(h, json!([{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]));
        assert_eq!(history_calls(&[json!({"function": {"name": "f", "arguments": "[1"}})], "m").expect_err("bad").param.as_deref(), Some("m[0].function.arguments"));
    }
}
