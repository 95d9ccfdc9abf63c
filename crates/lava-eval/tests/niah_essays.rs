//! Classic needle test on the shared Paul Graham essays (synthetic text when absent), plus
//! the heatmap and JSON output of a fake run.

mod common;

use lava_eval::niah::{
    build_context, context_lengths, depth_percents, render_heatmap_png, score_response, NiahCell, NiahConfig,
    NiahGrid, NiahHaystack, NiahPrompt, EXPECTED_ANSWER,
};
use lava_eval::CharTokenizer;

#[test]
fn needle_grid_on_essays_and_heatmap() {
    let tok = CharTokenizer;
    let cfg = NiahConfig::default();
    let lengths = context_lengths(2000, 20000, 6);
    let depths = depth_percents(0.0, 100.0, 6);
    let max_len = *lengths.iter().max().unwrap();
    let hay = match common::shared_data().map(|d| d.join("paulgraham_essays")).filter(|d| d.is_dir()) {
        Some(dir) => NiahHaystack::from_dir(&tok, dir, max_len).unwrap(),
        None => NiahHaystack::from_text(&tok, &common::synthetic_essay(400), max_len).unwrap(),
    };
    assert!(hay.len() >= max_len);
    let mut cells = Vec::new();
    for &l in &lengths {
        for &d in &depths {
            let c = build_context(&tok, &hay, l, d, &cfg).unwrap();
            assert_eq!(c.context_tokens, l - cfg.final_context_length_buffer);
            assert_eq!(c.context.matches(cfg.needle.as_str()).count(), 1);
            let at = c.context.find(cfg.needle.as_str()).unwrap();
            let before = c.context[..at].trim_end();
            assert!(before.is_empty() || before.ends_with('.') || d == 100.0, "{l}/{d}");
            // backed off at most one (long) sentence from the requested depth
            let haystack_tokens = (c.context_tokens - cfg.needle.chars().count()) as f64;
            let backoff = (d / 100.0 - c.actual_depth) * haystack_tokens;
            assert!((-1e-9..600.0).contains(&backoff), "{l}/{d}: backed off {backoff} tokens");
            let prompt = NiahPrompt::new(&c.context, &cfg).to_plain();
            assert!(prompt.contains(&c.context));
            // a fake model that finds the needle except deep in long contexts
            let response = if l > 10000 && d > 40.0 && d < 90.0 { "Go to the beach." } else { "Eat a sandwich in Dolores Park on a sunny day." };
            cells.push(NiahCell { context_length: l, depth_percent: d, score: score_response(response, EXPECTED_ANSWER) });
        }
    }
    let grid = NiahGrid::from_cells("NIAH fake model (char tokens)", &cells);
    assert_eq!(grid.scores.len(), depths.len());
    let out = tempfile::tempdir().unwrap();
    render_heatmap_png(&grid, out.path().join("niah.png")).unwrap();
    grid.write_json(out.path().join("niah.json")).unwrap();
    assert_eq!(NiahGrid::read_json(out.path().join("niah.json")).unwrap(), grid);
    if let Some(dir) = std::env::var_os("LAVA_EVAL_PLOT_DIR") {
        std::fs::copy(out.path().join("niah.png"), std::path::Path::new(&dir).join("niah.png")).unwrap();
    }
}
