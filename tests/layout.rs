//! The layout's rules that a compiler does not check.
//!
//! No import cycle, of any length, between the modules of any crate of the workspace
//! (`src/`, `client/src/`, `bench/src/`, `api/src/`). A cycle makes none of its modules
//! understandable alone. Modules are found from the files (`a.rs`, `a/mod.rs`, `a/b.rs`)
//! and inline `mod x { … }` blocks; a module's imports from the paths its code names
//! (`crate::…`, `super::…`, `self::…`, `use` trees included), comments and strings aside.
//!
//! Each import is read at the level of the siblings it joins: `a::x` naming `b::y` is the
//! edge `a -> b` between the children of the crate root, and cycles are looked for among
//! the children of every module. A child naming its parent (or the parent its child) is
//! the tree itself, not a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from its crate's root: `["store", "cached"]`.
type ModPath = Vec<String>;

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The module a file is, from its path under the crate's source folder.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut path: ModPath = relative.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        path.pop();
    }
    path
}

/// The code of a file with comments, strings and character literals blanked (newlines
/// kept), so that a path in a doc comment or a message is not read as an import.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_char(chars.get(i.wrapping_sub(1))) {
            // A raw string: r"…", r#"…"#, r##"…"##.
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    out.push(blank(c));
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{1F600}'); a lifetime ('a) is code.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut rest = code;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_alphanumeric() || c == '_' {
            rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len())
        } else if rest.starts_with("::") {
            2
        } else {
            c.len_utf8()
        };
        if !c.is_whitespace() {
            tokens.push(&rest[..len]);
        }
        rest = &rest[len..];
    }
    tokens
}

/// Reads a path or a `use` tree that starts at `tokens[*at]` under `prefix`, and adds every
/// full path it names to `into`.
fn use_tree(tokens: &[&str], at: &mut usize, prefix: &ModPath, into: &mut Vec<ModPath>) {
    let mut path = prefix.clone();
    loop {
        match tokens.get(*at).copied() {
            Some("{") => {
                *at += 1;
                while !matches!(tokens.get(*at).copied(), Some("}") | None) {
                    let before = *at;
                    use_tree(tokens, at, &path, into);
                    if tokens.get(*at) == Some(&",") || *at == before {
                        // A glob (`*`) or anything else that is no path is passed over.
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            Some("self") => {
                *at += 1;
            }
            Some(name) if name.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                path.push(name.to_string());
                *at += 1;
            }
            _ => {}
        }
        if tokens.get(*at) == Some(&"::") {
            *at += 1;
        } else {
            into.push(path);
            return;
        }
    }
}

/// Every (module, named path) of one file: the module is the file's or an inline one in it.
fn named_paths(file_module: &ModPath, text: &str) -> Vec<(ModPath, ModPath)> {
    let code = code_only(text);
    let tokens = tokens(&code);
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut found = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        let current: ModPath = file_module.iter().cloned().chain(inline.iter().map(|(m, _)| m.clone())).collect();
        let token = tokens[at];
        match token {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, open)| *open == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(at + 2) == Some(&"{") => {
                inline.push((tokens[at + 1].to_string(), depth));
                depth += 1;
                at += 3;
                continue;
            }
            "crate" | "super" | "self"
                if tokens.get(at + 1) == Some(&"::") && tokens.get(at.wrapping_sub(1)) != Some(&"::") =>
            {
                let mut base = if token == "crate" { ModPath::new() } else { current.clone() };
                at += 2;
                if token == "super" {
                    base.pop();
                    while tokens.get(at) == Some(&"super") && tokens.get(at + 1) == Some(&"::") {
                        base.pop();
                        at += 2;
                    }
                }
                let mut paths = Vec::new();
                use_tree(&tokens, &mut at, &base, &mut paths);
                found.extend(paths.into_iter().map(|p| (current.clone(), p)));
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    found
}

/// An import between two siblings: (parent, from, to) and where it was seen.
type Edges = BTreeMap<(ModPath, String, String), String>;

/// The imports between siblings of one crate's modules.
fn sibling_imports(src: &Path) -> (BTreeSet<ModPath>, Edges) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges = Edges::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (from, named) in named_paths(&module_of(src, file), &text) {
            // The module a path names: its longest prefix that is a module.
            let to: ModPath =
                (0..=named.len()).rev().map(|n| named[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default();
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // the module itself, an ancestor or a descendant
            }
            let where_ = format!("{} names {}", file.strip_prefix(src).unwrap().display(), named.join("::"));
            edges.entry((from[..common].to_vec(), from[common].clone(), to[common].clone())).or_insert(where_);
        }
    }
    (modules, edges)
}

/// Every import cycle among siblings, each as its path (`a -> b -> a`) with the line of
/// code that makes each step.
fn cycles(edges: &Edges) -> Vec<String> {
    let mut graph: BTreeMap<(&ModPath, &str), Vec<&str>> = BTreeMap::new();
    for (parent, from, to) in edges.keys() {
        graph.entry((parent, from)).or_default().push(to);
    }
    let mut found = Vec::new();
    let mut done: BTreeSet<(&ModPath, &str)> = BTreeSet::new();
    for &(parent, start) in graph.keys() {
        let mut stack: Vec<&str> = Vec::new();
        walk(&graph, edges, parent, start, &mut stack, &mut done, &mut found);
    }
    found
}

fn walk<'a>(
    graph: &BTreeMap<(&'a ModPath, &'a str), Vec<&'a str>>,
    edges: &Edges,
    parent: &'a ModPath,
    node: &'a str,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<(&'a ModPath, &'a str)>,
    found: &mut Vec<String>,
) {
    if let Some(at) = stack.iter().position(|m| *m == node) {
        let mut cycle: Vec<&str> = stack[at..].to_vec();
        cycle.push(node);
        let steps: Vec<String> =
            cycle.windows(2).map(|w| edges[&(parent.clone(), w[0].to_string(), w[1].to_string())].clone()).collect();
        let under = if parent.is_empty() { "crate".to_string() } else { parent.join("::") };
        found.push(format!("{under}: {} ({})", cycle.join(" -> "), steps.join("; ")));
        return;
    }
    if !done.insert((parent, node)) {
        return;
    }
    stack.push(node);
    for next in graph.get(&(parent, node)).into_iter().flatten() {
        walk(graph, edges, parent, next, stack, done, found);
    }
    stack.pop();
}

const CRATES: [&str; 4] = ["src", "client/src", "bench/src", "api/src"];

#[test]
fn no_import_cycle_in_any_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for krate in CRATES {
        let (modules, edges) = sibling_imports(&root.join(krate));
        assert!(modules.len() > 3, "the modules of {krate} were found: {modules:?}");
        found.extend(cycles(&edges).into_iter().map(|c| format!("{krate}: {c}")));
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// No source file of any crate over 800 lines: a file that long holds more than one thing
/// (guards the split of `client/src/cli/mod.rs`, 891 lines before it; seen failing so).
#[test]
fn no_source_file_over_800_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate), &mut files);
        for file in files {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > 800 {
                long.push(format!("{}: {lines} lines", file.strip_prefix(root).unwrap().display()));
            }
        }
    }
    assert!(long.is_empty(), "files over 800 lines:\n{}", long.join("\n"));
}

/// The cycle finder itself: a made-up crate with a cycle of three, one through a nested
/// module, one through a `use` tree and one through `super::`, is caught with its path;
/// a parent and child naming each other, a path in a comment or a string, and a test
/// module's `use super::*` are not cycles, and a glob inside a `use` tree is read.
#[test]
fn the_cycle_finder_finds_a_cycle_of_three() {
    let src = std::env::temp_dir().join(format!("keygate-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("b")).unwrap();
    let files = [
        ("lib.rs", "mod a; mod b; mod c; mod d;"),
        ("a.rs", "//! Not [crate::c].\nuse crate::{b::inner::{self, Thing}};\nconst S: &str = \"crate::c\";"),
        ("b/mod.rs", "mod inner; use self::inner::Thing;"),
        ("b/inner.rs", "pub fn f() { super::super::c::g(); super::helper(); }"),
        ("c.rs", "pub fn g() -> u8 { crate::a::h() }\n#[cfg(test)]\nmod tests { use super::*; }"),
        // A glob inside a use tree is passed over (it once made the reader loop forever).
        ("d.rs", "use super::{*, c::{g}};"),
    ];
    for (path, text) in files {
        std::fs::write(src.join(path), text).unwrap();
    }
    let (_, edges) = sibling_imports(&src);
    let found = cycles(&edges);
    std::fs::remove_dir_all(&src).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("crate: a -> b -> c -> a ("), "{found:?}");
    assert!(found[0].contains("b/inner.rs names c::g"), "{found:?}");
}

/// The server library holds no client: only the binary (`src/main.rs`) reaches for
/// `keygate_client`, for its admin commands.
#[test]
fn the_server_library_holds_no_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "the sources were found: {files:?}");
    let users: Vec<_> = files
        .iter()
        .filter(|f| !f.ends_with("main.rs"))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("keygate_client"))
        .collect();
    assert!(users.is_empty(), "library modules that use keygate_client: {users:?}");
}
