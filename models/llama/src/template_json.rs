//! The chat templates' `tojson` filter, as the templates' authors run it.
//!
//! Chat templates are written for Hugging Face transformers, whose `tojson`
//! is Python's `json.dumps(x, ensure_ascii=False, indent=indent)`: items
//! separated by `", "` and keys by `": "`, keys in the order they were given,
//! non-ASCII text as it is, nothing escaped for HTML, floats as Python writes
//! them. llama.cpp's template engine writes the same. minijinja's own filter
//! writes compact JSON with its keys sorted and `<`, `>`, `&`, `'` escaped, so
//! the tool definitions and tool-call arguments that Qwen2.5's template writes
//! into the prompt came out as text the model was not trained on (a prompt
//! with two tools: 236 tokens, where transformers and llama.cpp write 277).

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};
use serde_json::Value as Json;

/// The `tojson` filter: `x | tojson` or `x | tojson(indent=N)` (`indent` also
/// positional; `true` is 2 as in minijinja, `false` or none is one line).
pub(crate) fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match bool::try_from(v.clone()) {
            Ok(true) => Some(2),
            Ok(false) => None,
            Err(_) => Some(usize::try_from(v)?),
        },
    };
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e))?;
    let mut out = String::new();
    write_value(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)` into `out`, at
/// nesting `level`.
fn write_value(value: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => out.push_str(&python_float(f)),
            None => out.push_str(&n.to_string()),
        },
        Json::String(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
        Json::Array(items) => {
            write_items(items.iter().map(|v| (None, v)), ('[', ']'), indent, level, out);
        }
        Json::Object(map) => {
            write_items(map.iter().map(|(k, v)| (Some(k.as_str()), v)), ('{', '}'), indent, level, out);
        }
    }
}

fn write_items<'a>(
    items: impl Iterator<Item = (Option<&'a str>, &'a Json)>,
    (open, close): (char, char),
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) {
    let mut items = items.peekable();
    out.push(open);
    if items.peek().is_none() {
        out.push(close);
        return;
    }
    // Python's separators: (", ", ": ") on one line, ("," + newline, ": ") indented.
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat(' ').take(n * level));
        }
    };
    for (i, (key, v)) in items.enumerate() {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, level + 1);
        if let Some(k) = key {
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push_str(": ");
        }
        write_value(v, indent, level + 1, out);
    }
    newline(out, level);
    out.push(close);
}

/// A finite float as Python's `repr` writes it: the shortest digits that
/// read back to it (as Rust finds them), in fixed notation when its decimal
/// exponent is in -4..16 (with `.0` when it is whole), else `d.ddde+XX`.
/// Non-finite floats as `json.dumps` writes them.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // `{:e}` gives the shortest round-trip digits as d.ddd and the exponent.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}
