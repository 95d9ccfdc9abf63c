//! Small helpers that reproduce Python string / number behaviour the reference harnesses rely on.

use crate::error::{EvalError, Result};

/// Python's `str.isspace()` for one character: Unicode `White_Space` plus the ASCII
/// information separators U+001C..U+001F, which Python also splits on.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` (no argument): split on runs of whitespace, dropping empty pieces.
pub fn py_split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_is_space).filter(|w| !w.is_empty())
}

/// Python's `" ".join(s.split())`.
pub fn py_normalize_whitespace(s: &str) -> String {
    py_split_whitespace(s).collect::<Vec<_>>().join(" ")
}

/// Python's `round(x, ndigits)` for floats (correctly rounded, ties to even on the exact
/// binary value), implemented through Rust's exact decimal formatting which has the same
/// semantics.
pub fn py_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.ndigits$}").parse::<f64>().unwrap_or(x)
}

/// `np.round(np.linspace(start, stop, num, endpoint=True)).astype(int)`.
///
/// numpy computes `i * step + start` with `step = (stop - start) / (num - 1)`, forces the last
/// point to `stop`, and rounds half to even.
pub fn np_round_linspace(start: f64, stop: f64, num: usize) -> Vec<i64> {
    np_linspace(start, stop, num).into_iter().map(|v| v.round_ties_even() as i64).collect()
}

/// `np.linspace(start, stop, num, endpoint=True)` as `f64`s.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// Python-`str.format`-like substitution of named fields: `{name}` is replaced by the value
/// of `name`, `{{` and `}}` are literal braces. Values are inserted verbatim (never
/// re-parsed). An unknown field or an unbalanced brace is an error, as in Python.
pub fn format_template(template: &str, fields: &[(&str, &str)]) -> Result<String> {
    let extra: usize = fields.iter().map(|(_, v)| v.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => {
                if let Some(&(_, '{')) = chars.peek() {
                    chars.next();
                    out.push('{');
                    continue;
                }
                let rest = &template[i + 1..];
                let end = rest.find('}').ok_or_else(|| {
                    EvalError::Template(format!("unmatched '{{' at byte {i} of template"))
                })?;
                let name = &rest[..end];
                let value = fields
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| EvalError::Template(format!("unknown field {{{name}}} in template")))?;
                out.push_str(value);
                // skip the field name and the closing brace
                for _ in 0..name.chars().count() + 1 {
                    chars.next();
                }
            }
            '}' => {
                if let Some(&(_, '}')) = chars.peek() {
                    chars.next();
                    out.push('}');
                } else {
                    return Err(EvalError::Template(format!("single '}}' at byte {i} of template")));
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// 64-bit FNV-1a hash: a stable (version-independent) hash used to derive per-task seeds.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser: decorrelates seeds derived from small integers.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_python() {
        let v: Vec<_> = py_split_whitespace(" a\u{1f}b \t c\u{a0}d ").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
        assert_eq!(py_normalize_whitespace("  x   y "), "x y");
        assert_eq!(py_normalize_whitespace(""), "");
    }

    #[test]
    fn round_like_python() {
        assert_eq!(py_round(0.125, 2), 0.12); // exact tie -> even
        assert_eq!(py_round(0.375, 2), 0.38);
        assert_eq!(py_round(2.675, 2), 2.67); // binary value is below the tie
        assert_eq!(py_round(33.333333, 2), 33.33);
    }

    #[test]
    fn linspace_like_numpy() {
        // np.round(np.linspace(0, 100, num=40)).astype(int) starts 0, 3, 5, 8, 10, 13, 15, 18 ...
        let d = np_round_linspace(0.0, 100.0, 40);
        assert_eq!(d.len(), 40);
        assert_eq!(&d[..8], &[0, 3, 5, 8, 10, 13, 15, 18]);
        assert_eq!(d[39], 100);
        // np.round(np.linspace(1000, 16000, 35)) -> 1000, 1441, 1882, ...
        let l = np_round_linspace(1000.0, 16000.0, 35);
        assert_eq!(&l[..3], &[1000, 1441, 1882]);
        assert_eq!(l[34], 16000);
        assert_eq!(np_round_linspace(0.0, 1.0, 1), vec![0]);
        assert!(np_round_linspace(0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn format_template_fields_and_escapes() {
        let s = format_template("a {x} {{b}} {y}{x}", &[("x", "1"), ("y", "{z}")]).unwrap();
        assert_eq!(s, "a 1 {b} {z}1");
        assert!(format_template("{nope}", &[]).is_err());
        assert!(format_template("{open", &[]).is_err());
        assert!(format_template("close}", &[]).is_err());
        assert_eq!(format_template("héllo {x}é", &[("x", "ü")]).unwrap(), "héllo üé");
    }
}
