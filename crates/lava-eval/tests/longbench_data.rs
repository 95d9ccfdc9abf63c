//! LongBench loading / prompting / scoring on the shared data (skipped when it is absent).

mod common;

use lava_eval::longbench::{
    list_datasets, load_longbench_jsonl, truncate_middle, uses_chat_template, LongBenchConfig, Metric,
    ENGLISH_DATASETS,
};
use lava_eval::{CharTokenizer, TokenCounter};

#[test]
fn shared_longbench_files_load_prompt_and_score() {
    let Some(dir) = common::shared_data().map(|d| d.join("longbench")).filter(|d| d.is_dir()) else {
        eprintln!("shared LongBench data not found; skipping");
        return;
    };
    let cfg = LongBenchConfig::load_dir(&dir).unwrap();
    let datasets = list_datasets(&dir).unwrap();
    assert!(!datasets.is_empty());
    let mut sorted = datasets.clone();
    sorted.sort();
    assert_eq!(datasets, sorted);
    for ds in &datasets {
        assert!(ENGLISH_DATASETS.contains(&ds.as_str()), "{ds} is an English dataset");
        let metric = Metric::for_dataset(ds).unwrap();
        let max_new = cfg.max_new_tokens(ds).unwrap();
        assert!(max_new >= 32);
        let records = load_longbench_jsonl(dir.join(format!("{ds}.jsonl"))).unwrap();
        assert!(!records.is_empty(), "{ds}");
        for r in &records {
            assert_eq!(&r.dataset, ds);
            let prompt = cfg.build_prompt(r).unwrap();
            assert!(prompt.contains(&r.context) && prompt.contains(&r.input));
            assert!(!prompt.contains("{context}") && !prompt.contains("{input}"));
            let t = truncate_middle(&CharTokenizer, &prompt, 2000);
            assert!(CharTokenizer.count(&t) <= 2000);
            if CharTokenizer.count(&prompt) > 2000 {
                let head: String = prompt.chars().take(1000).collect();
                let tail: String = prompt.chars().rev().take(1000).collect::<Vec<_>>().into_iter().rev().collect();
                assert_eq!(t, head + &tail);
            }
            // scoring the reference answer itself
            let s = r.score(&r.answers[0]).unwrap();
            assert!((0.0..=1.0).contains(&s), "{ds}: {s}");
            if matches!(metric, Metric::QaF1 | Metric::RougeL | Metric::Retrieval | Metric::Count) {
                assert!(s > 0.99, "{ds}: own answer scores {s}");
            }
            assert_eq!(r.score("").unwrap_or(0.0), 0.0, "{ds}: empty prediction");
        }
        let chat = uses_chat_template(ds);
        assert_eq!(chat, !["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"].contains(&ds.as_str()));
    }
}
