//! Keeps `sdk/README.md` honest: every Rust block of the guide must appear verbatim in
//! `sdk/examples/tagger.rs`, which `cargo test` compiles and tests.

#[test]
fn every_rust_block_of_the_guide_is_compiled_and_tested() {
    let guide = include_str!("../README.md");
    let example = include_str!("../examples/tagger.rs");
    let blocks: Vec<&str> = guide
        .split("```rust\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(blocks.len() >= 2, "the guide lost its code");
    for block in blocks {
        assert!(
            example.contains(block),
            "sdk/examples/tagger.rs is missing this block of the guide:\n{block}"
        );
    }
}
