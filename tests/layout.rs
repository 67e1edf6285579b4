//! The layout's one rule that a compiler does not check: no two modules of `src/` import
//! each other. Each top-level module (a file or a folder of `src/`) may use others, but a
//! use in both directions is a circle that makes neither understandable alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The top-level modules each module's code names with `crate::…`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "main", "properties"].contains(&name.as_str()) {
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        let mut used = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                // `crate::{a, b::c}` names several; `crate::a::…` one.
                let named: Vec<&str> = match rest.strip_prefix('{') {
                    Some(list) => list.split('}').next().unwrap_or("").split(',').collect(),
                    None => vec![rest],
                };
                for item in named {
                    let module: String =
                        item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !module.is_empty() && module != name {
                        used.insert(module);
                    }
                }
            }
        }
        modules.insert(name, used);
    }
    modules
}

#[test]
fn no_two_modules_import_each_other() {
    let modules = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(modules.len() > 10, "the modules of src/ were found: {modules:?}");
    let mut circles = Vec::new();
    for (module, used) in &modules {
        for other in used {
            if other > module && modules.get(other).is_some_and(|theirs| theirs.contains(module)) {
                circles.push(format!("{module} <-> {other}"));
            }
        }
    }
    assert!(circles.is_empty(), "modules that import each other: {circles:?}");
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
