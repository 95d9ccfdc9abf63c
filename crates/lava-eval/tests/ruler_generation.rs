//! RULER generation: token-length fit, inserted needles, reproducibility, scoring.

mod common;

use lava_eval::ruler::{TaskConfig, CWE_TEMPLATE};
use lava_eval::{EvalError, RulerGenerator, RulerSample, RulerTask, TokenCounter, WhitespaceCounter};

fn generator(counter: &dyn TokenCounter) -> RulerGenerator<'_> {
    let g = RulerGenerator::new(counter);
    match common::shared_data().map(|d| d.join("paulgraham_essays")).filter(|d| d.is_dir()) {
        Some(dir) => g.with_essay_dir(dir).expect("essays load"),
        None => g.with_essay_text(&common::synthetic_essay(3000)),
    }
}

/// Whitespace-separated words of the main numbered list of a CWE prompt.
fn cwe_main_list(input: &str) -> Vec<&str> {
    let head = "Memorize the ones that appear most often.\n";
    let start = input.rfind(head).expect("template head") + head.len();
    let end = start + input[start..].find("\nQuestion: What are the 10").expect("question");
    input[start..end].split_whitespace().skip(1).step_by(2).collect()
}

fn check_sample(s: &RulerSample, task: RulerTask, max_len: usize) {
    let counter = WhitespaceCounter;
    let prompt = s.prompt();
    let tokens = counter.count(&prompt) + s.tokens_to_generate;
    assert_eq!(s.tokens_to_generate, task.tokens_to_generate());
    assert_eq!(s.length, tokens, "{task}: recorded length");
    assert!(tokens <= max_len, "{task}@{max_len}: {tokens} tokens exceed the limit");
    assert!(tokens as f64 >= 0.98 * max_len as f64, "{task}@{max_len}: only {tokens} tokens (< 98%)");
    assert!(!s.outputs.is_empty());
    assert!(prompt.ends_with(&s.answer_prefix) && !s.answer_prefix.is_empty());

    for n in &s.needles {
        if n.occurrences == 1 {
            assert_eq!(prompt.matches(n.text.as_str()).count(), 1, "{task}: needle {:?} must occur once", n.text);
            let off = n.byte_offset.expect("offset");
            assert!(prompt[off..].starts_with(&n.text));
            let d = n.depth.expect("depth");
            assert!((0.0..=1.0).contains(&d));
        }
    }
    match task.config() {
        TaskConfig::Niah(a) => {
            let k = a.num_needle_k.max(a.num_needle_q);
            assert_eq!(s.needles.len(), k * a.num_needle_v, "{task}");
            assert_eq!(s.outputs.len(), a.num_needle_q * a.num_needle_v, "{task}");
            for o in &s.outputs {
                assert!(s.needles.iter().any(|n| n.value.as_deref() == Some(o.as_str())), "{task}: output {o} not a needle");
            }
            let keys: std::collections::HashSet<_> = s.needles.iter().map(|n| n.key.clone()).collect();
            assert_eq!(keys.len(), k, "{task}: distinct keys");
            if a.type_haystack == lava_eval::ruler::HaystackType::Essay {
                assert!(s.needles.iter().all(|n| n.depth_percent.is_some()));
            }
            if a.num_needle_q * a.num_needle_v == 1 {
                let v = &a.type_needle_v.name()[..a.type_needle_v.name().len() - 1];
                assert!(s.input.contains(&format!("A special magic {v} is hidden")), "{task}: single wording");
                assert!(!s.input.contains("Some special magic"), "{task}");
            } else {
                let v = a.type_needle_v.name();
                assert!(s.input.contains(&format!("Some special magic {v} are hidden")), "{task}");
            }
        }
        TaskConfig::VariableTracking(a) => {
            assert_eq!(s.needles.len(), a.num_chains * (a.num_hops + 1));
            assert_eq!(s.outputs.len(), a.num_hops + 1);
            // the chain is consistent: first assigns the queried value, the others chain names
            let value = s.needles[0].value.clone().unwrap();
            assert!(s.answer_prefix.contains(&format!("the value {value}, they are:")));
            for (i, n) in s.needles.iter().enumerate() {
                assert_eq!(n.key.as_deref(), Some(s.outputs[i].as_str()));
            }
            // the in-context example precedes the task and answers its own question
            assert_eq!(s.input.matches("Memorize and track the chain(s)").count(), 2);
        }
        TaskConfig::CommonWordsExtraction(a) => {
            let list = cwe_main_list(&s.input);
            let mut counts = std::collections::HashMap::new();
            for w in &list {
                *counts.entry(*w).or_insert(0usize) += 1;
            }
            for n in &s.needles {
                assert_eq!(counts.get(n.text.as_str()), Some(&a.freq_cw), "{task}: count of {}", n.text);
            }
            assert_eq!(s.outputs.len(), a.num_cw);
            for (w, c) in &counts {
                if !s.outputs.iter().any(|o| o == w) {
                    assert_eq!(*c, a.freq_ucw, "{task}: uncommon word {w}");
                }
            }
            assert_eq!(s.input.matches(CWE_TEMPLATE.split('\n').next().unwrap()).count(), 2, "few-shot + main");
        }
        TaskConfig::FreqWordsExtraction(_) => {
            let start = s.input.find("coded words. ").unwrap() + "coded words. ".len();
            let end = s.input.rfind("\nQuestion:").unwrap();
            let mut counts = std::collections::HashMap::new();
            for w in s.input[start..end].split_whitespace() {
                *counts.entry(w).or_insert(0usize) += 1;
            }
            for n in &s.needles {
                assert_eq!(counts.get(n.text.as_str()).copied().unwrap_or(0), n.occurrences, "{task}");
            }
            let mut ranked: Vec<(&str, usize)> = counts.into_iter().filter(|(w, _)| *w != "...").collect();
            ranked.sort_by_key(|x| std::cmp::Reverse(x.1));
            let top: Vec<usize> = ranked.iter().take(3).map(|x| x.1).collect();
            let want: Vec<usize> = s.needles.iter().map(|n| n.occurrences).collect();
            assert_eq!(top, want, "{task}: answers are the three most frequent words");
            assert!(ranked.get(3).is_none_or(|x| x.1 <= want[2]));
        }
    }
    // the expected outputs score 1, nothing scores 0
    assert_eq!(s.score(&s.outputs.join(", ")), 1.0);
    assert_eq!(s.score(""), 0.0);
}

#[test]
fn all_tasks_fit_length_and_contain_their_needles() {
    let counter = WhitespaceCounter;
    let g = generator(&counter);
    for task in RulerTask::ALL {
        for &max_len in &[4096usize, 8192] {
            for index in 0..2 {
                let s = g.generate(task, max_len, 42, index).unwrap_or_else(|e| panic!("{task}@{max_len}: {e}"));
                assert_eq!(s.task, task.name());
                check_sample(&s, task, max_len);
            }
        }
    }
}

#[test]
fn short_contexts_use_the_short_variants() {
    let counter = WhitespaceCounter;
    let g = generator(&counter);
    for task in [RulerTask::NiahSingle1, RulerTask::NiahMultikey2, RulerTask::Vt, RulerTask::Cwe, RulerTask::Fwe] {
        let s = g.generate(task, 2048, 7, 0).unwrap();
        let tokens = WhitespaceCounter.count(&s.prompt()) + s.tokens_to_generate;
        assert!(tokens <= 2048 && tokens as f64 >= 0.98 * 2048.0, "{task}: {tokens}");
        if task == RulerTask::Cwe {
            // max_seq_length < 4096: common words repeated 6 times, uncommon once
            let list = cwe_main_list(&s.input);
            for o in &s.outputs {
                assert_eq!(list.iter().filter(|w| *w == o).count(), 6);
            }
        }
    }
}

#[test]
fn reproducible_with_the_same_seed() {
    let counter = WhitespaceCounter;
    let g = generator(&counter);
    for task in RulerTask::ALL {
        let a = g.generate(task, 4096, 123, 3).unwrap();
        let b = g.generate(task, 4096, 123, 3).unwrap();
        assert_eq!(a, b, "{task}");
        let c = g.generate(task, 4096, 124, 3).unwrap();
        assert_ne!(a.prompt(), c.prompt(), "{task}: another seed gives another sample");
        let d = g.generate(task, 4096, 123, 4).unwrap();
        assert_ne!(a.prompt(), d.prompt(), "{task}: another index gives another sample");
    }
    // a fresh generator gives the same samples
    let g2 = generator(&counter);
    let samples = g.generate_samples(RulerTask::Vt, 4096, 5, 2).unwrap();
    assert_eq!(g2.generate_samples(RulerTask::Vt, 4096, 5, 2).unwrap(), samples);
    // and samples survive a JSONL round trip
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vt.jsonl");
    lava_eval::ruler::save_samples_jsonl(&p, &samples).unwrap();
    assert_eq!(lava_eval::ruler::load_samples_jsonl(&p).unwrap(), samples);
}

#[test]
fn model_template_and_errors() {
    let counter = WhitespaceCounter;
    let g = generator(&counter).with_model_template("[INST] {task_template} [/INST]").unwrap();
    let s = g.generate(RulerTask::NiahSingle2, 4096, 1, 0).unwrap();
    assert!(s.input.starts_with("[INST] A special magic number is hidden"));
    assert!(s.input.ends_with("mentioned in the provided text? [/INST]"));
    assert!(s.answer_prefix.starts_with(" The special magic number for "));
    assert!(s.answer_prefix.ends_with(" mentioned in the provided text is"));
    check_sample(&s, RulerTask::NiahSingle2, 4096);

    let g = generator(&counter);
    assert!(matches!(g.generate(RulerTask::NiahSingle1, 100, 1, 0), Err(EvalError::DoesNotFit { .. })));
    let no_essay = RulerGenerator::new(&counter);
    assert!(matches!(no_essay.generate(RulerTask::NiahSingle2, 4096, 1, 0), Err(EvalError::InvalidArgument(_))));
    assert!(no_essay.generate(RulerTask::NiahSingle1, 4096, 1, 0).is_ok());
    assert!(RulerGenerator::new(&counter).with_model_template("no placeholder").is_err());
    assert!(RulerGenerator::new(&counter).with_model_template("{task_template} {other}").is_err());
    assert_eq!(RulerTask::from_name("niah_multikey_3"), Some(RulerTask::NiahMultikey3));
    assert_eq!(RulerTask::from_name("qa_1"), None);
}

#[test]
fn remove_newline_tab_option() {
    let counter = WhitespaceCounter;
    let g = generator(&counter).with_remove_newline_tab(true);
    let s = g.generate(RulerTask::NiahMultikey2, 4096, 1, 0).unwrap();
    assert!(!s.prompt().contains('\n'));
    check_sample(&s, RulerTask::NiahMultikey2, 4096);
}
