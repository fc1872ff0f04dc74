//! The README's tonic, reqwest and sqlx snippets are the (doctested) examples of the modules'
//! docs: every line of each snippet appears, in order, among the visible lines of the
//! module's example.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn readme_block(readme: &str, heading: &str) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[start..];
    let open = rest.find("```rust\n").expect("a rust block") + "```rust\n".len();
    let close = rest[open..].find("```").expect("the block ends") + open;
    rest[open..close]
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with("# ") && *l != "#")
        .map(String::from)
        .collect()
}

fn module_doc_lines(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with("# ") && l != "#")
        .collect()
}

fn assert_subsequence(snippet: &[String], doc: &[String], what: &str) {
    let mut it = doc.iter();
    for line in snippet {
        assert!(
            it.any(|d| d == line),
            "{what}: README line {line:?} is not in the module's doctested example (in order)"
        );
    }
}

#[test]
fn readme_snippets_are_the_doctested_module_examples() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for (heading, file) in [
        ("### gRPC (tonic)", "src/grpc.rs"),
        ("### reqwest", "src/reqwest.rs"),
        ("### sqlx", "src/sqlx.rs"),
    ] {
        let src = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let snippet = readme_block(&readme, heading);
        assert!(snippet.len() >= 4, "{heading}: a real snippet");
        assert_subsequence(&snippet, &module_doc_lines(&src), heading);
    }
}
