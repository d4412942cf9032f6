//! The architecture's invariants, checked against the source rather than only written down
//! (docs/architecture.md): which module may name which dependency, no import circles, no
//! file too long to hold in one's head, and a code map that matches the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
const ARCHITECTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/architecture.md");
/// Longest source file, in lines.
const MAX_LINES: usize = 500;

/// Every `.rs` file under `src/`, by its path relative to `src/` (with `/`), and its text.
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new(SRC), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(SRC)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The files that name `word` outside the files `allowed` says may.
fn named_outside(word: &str, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|(path, _)| !allowed(path))
        .filter(|(_, text)| {
            text.match_indices(word).any(|(at, _)| {
                // A whole word: `tiny_http`, not `my_tiny_http_thing`.
                let before = text[..at].chars().next_back();
                let after = text[at + word.len()..].chars().next();
                let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !part(before) && !part(after)
            })
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn only_http_tiny_knows_tiny_http() {
    let outside = named_outside("tiny_http", |p| p.starts_with("http/tiny/"));
    assert!(outside.is_empty(), "tiny_http is named in {outside:?}");
}

#[test]
fn only_the_store_knows_rusqlite() {
    let outside = named_outside("rusqlite", |p| p.starts_with("store/"));
    assert!(outside.is_empty(), "rusqlite is named in {outside:?}");
}

#[test]
fn only_okeanos_knows_ureq() {
    let outside = named_outside("ureq", |p| p.starts_with("okeanos/"));
    assert!(outside.is_empty(), "ureq is named in {outside:?}");
}

#[test]
fn no_source_file_is_longer_than_500_lines() {
    let long: Vec<(String, usize)> = sources()
        .into_iter()
        .map(|(path, text)| (path, text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .collect();
    assert!(long.is_empty(), "files past {MAX_LINES} lines: {long:?}");
}

/// Which top-level modules each top-level module names (`crate::x`, `use crate::{x, y}`),
/// outside its unit tests and comments. `src/x.rs` and `src/x/` are module `x`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let top = path.split('/').next().unwrap().trim_end_matches(".rs");
        if top == "main" || top == "lib" {
            continue;
        }
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let mut names = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap();
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap().trim();
                    names.insert(name.to_string());
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
        let entry = edges.entry(top.to_string()).or_default();
        entry.extend(names.into_iter().filter(|n| !n.is_empty() && n != top));
    }
    edges
}

/// The modules of `edges` that can reach themselves.
fn in_circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if edges.contains_key(next) && seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    edges
        .keys()
        .filter(|m| reaches(m).contains(*m))
        .cloned()
        .collect()
}

#[test]
fn no_two_modules_import_each_other() {
    let edges = imports();
    assert!(edges.len() > 10, "the modules were not found: {edges:?}");
    let circles = in_circles(&edges);
    assert!(
        circles.is_empty(),
        "modules in an import circle: {circles:?}"
    );
}

#[test]
fn the_circle_check_finds_circles() {
    let edge = |a: &str, b: &[&str]| (a.to_string(), b.iter().map(|s| s.to_string()).collect());
    let circle = BTreeMap::from([edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"])]);
    assert_eq!(in_circles(&circle), ["a", "b", "c"]);
    let line = BTreeMap::from([edge("a", &["b"]), edge("b", &["c"]), edge("c", &[])]);
    assert!(in_circles(&line).is_empty());
}

/// The code map of docs/architecture.md: its "Code map" section, up to the next heading.
fn code_map() -> String {
    let architecture = std::fs::read_to_string(ARCHITECTURE).unwrap();
    let start = architecture
        .find("## Code map")
        .expect("docs/architecture.md has a code map");
    let rest = &architecture[start + 1..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn the_code_map_names_every_file_and_only_files_that_exist() {
    let map = code_map();
    let files = sources();
    let unnamed: Vec<&String> = files
        .keys()
        .filter(|path| !map.contains(&format!("`{path}`")))
        .collect();
    assert!(unnamed.is_empty(), "the code map lacks {unnamed:?}");
    let named: Vec<&str> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.ends_with(".rs") && !s.contains(' '))
        .collect();
    // A path is one of `src/`, or (a test, say) one of the repository's.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gone: Vec<&&str> = named
        .iter()
        .filter(|path| !files.contains_key(**path) && !root.join(path).exists())
        .collect();
    assert!(
        gone.is_empty(),
        "the code map names files that do not exist: {gone:?}"
    );
}
