//! The import rules of agent/src (ARCHITECTURE.md, "Imports flow"), read from the sources:
//!
//! 1. Nothing outside `ops/` names `crate::ops` (doc comments included): the parts and the
//!    shared basics never import operations; operations read their snapshots.
//! 2. The parts stack: `node` imports no other part, `cluster` only `node`, `backup` only
//!    `node` and `cluster`; `ops` may import all of them.
//! 3. No module imports one that, directly or through others, imports it back.
//!
//! A module is a file (`backup/restore.rs` is `backup::restore`, `backup/mod.rs` is `backup`);
//! its imports are the `crate::` paths in its code (comment lines left out), `use` groups
//! included, each resolved to the longest module it starts with.

use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::str::Chars;

/// The parts, in the order they may import one another: each only those before it.
const PARTS: [&str; 4] = ["node", "cluster", "backup", "ops"];

type Module = Vec<String>;

struct Source {
    file: PathBuf,
    text: String,
}

fn sources() -> BTreeMap<Module, Source> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Module, Source>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("main.rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(module, Source { file: path, text });
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The paths a `crate::` tree names, read from just after `crate::`.
fn paths_after_crate(text: &str) -> Vec<Module> {
    fn skip_ws(c: &mut Peekable<Chars>) {
        while c.peek().is_some_and(|ch| ch.is_whitespace()) {
            c.next();
        }
    }
    fn tree(c: &mut Peekable<Chars>, mut prefix: Module, out: &mut Vec<Module>) {
        loop {
            skip_ws(c);
            if c.peek() == Some(&'{') {
                c.next();
                loop {
                    skip_ws(c);
                    if matches!(c.peek(), Some('}') | None) {
                        c.next();
                        return;
                    }
                    tree(c, prefix.clone(), out);
                    // Past a nested item's end (` as Name`, say) to its separator.
                    loop {
                        match c.next() {
                            Some(',') => break,
                            Some('}') | None => return,
                            _ => {}
                        }
                    }
                }
            }
            let mut seg = String::new();
            while let Some(&ch) = c.peek() {
                if !(ch.is_alphanumeric() || ch == '_') {
                    break;
                }
                seg.push(ch);
                c.next();
            }
            if seg.is_empty() {
                out.push(prefix);
                return;
            }
            if seg != "self" {
                prefix.push(seg);
            }
            let mut ahead = c.clone();
            if ahead.next() == Some(':') && ahead.next() == Some(':') {
                c.next();
                c.next();
            } else {
                out.push(prefix);
                return;
            }
        }
    }
    let mut out = Vec::new();
    tree(&mut text.chars().peekable(), Vec::new(), &mut out);
    out
}

/// Every `crate::` path in `text`'s code.
fn crate_paths(text: &str) -> Vec<Module> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|ch| ch.is_alphanumeric() || ch == '_') {
            continue;
        }
        out.extend(paths_after_crate(&code[at + "crate::".len()..]));
    }
    out
}

/// Module → the other modules it imports.
fn import_graph(sources: &BTreeMap<Module, Source>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |path: &Module| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| sources.contains_key(m))
    };
    sources
        .iter()
        .map(|(module, src)| {
            let deps = crate_paths(&src.text)
                .iter()
                .filter_map(resolve)
                .filter(|d| d != module)
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

#[test]
fn the_path_reader_follows_use_groups() {
    let text = "use crate::backup::{catalog::{ChainId, ObjectName}, keys as k, self};\n\
                // crate::ops::metrics in a comment is no import\n\
                let t = crate::node::supervisor::spawn(crate::config::load()?);";
    let got: Vec<String> = crate_paths(text).iter().map(|p| name(p)).collect();
    assert_eq!(
        got,
        [
            "backup::catalog::ChainId",
            "backup::catalog::ObjectName",
            "backup::keys",
            "backup",
            "node::supervisor::spawn",
            "config::load",
        ]
    );
}

#[test]
fn only_ops_names_ops() {
    let offenders: Vec<String> = sources()
        .iter()
        .filter(|(m, s)| m.first().is_none_or(|p| p != "ops") && s.text.contains("crate::ops"))
        .map(|(_, s)| s.file.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these files name crate::ops, but only ops may: {offenders:?} \
         (hand the part a narrow handle instead: a closure, a counter, a watch channel)"
    );
}

#[test]
fn parts_import_only_the_parts_below_them() {
    let sources = sources();
    let graph = import_graph(&sources);
    let part = |m: &Module| {
        m.first()
            .and_then(|first| PARTS.iter().position(|p| p == first))
    };
    let mut wrong = Vec::new();
    for (from, deps) in &graph {
        let Some(rank) = part(from) else { continue };
        for to in deps {
            if part(to).is_some_and(|r| r > rank) {
                wrong.push(format!("{} imports {}", name(from), name(to)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "parts import only those before them in {PARTS:?}: {wrong:#?}"
    );
    // The reader sees imports at all (an empty graph would pass everything).
    let ha: Module = vec!["cluster".into(), "ha".into()];
    assert!(graph[&ha].contains(&vec!["node".to_string(), "supervisor".to_string()]));
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = import_graph(&sources());
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.clone());
        for d in &graph[m] {
            if let Some(cycle) = visit(d, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| name(m)).collect();
            panic!("an import cycle: {}", names.join(" -> "));
        }
    }
}
