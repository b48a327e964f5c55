//! The repository stands on its own: no tracked file outside documentation refers to the
//! reference folder that development machines keep beside the clone (a clone from plume's home
//! has nothing beside it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked files (`git ls-files`), or every file under the repository but `.git/` and
/// `target/` when this is not a git checkout (a source archive).
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    if let Ok(out) = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
    {
        if out.status.success() && !out.stdout.is_empty() {
            return out
                .stdout
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
                .collect();
        }
    }
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if name != ".git" && name != "target" {
                    stack.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The files that may mention the reference folder: documentation says where the reference
/// results came from.
fn is_documentation(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "md")
}

/// The offending lines of `text` (1-based line numbers).
fn mentions(text: &str, needle: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn no_tracked_file_outside_documentation_refers_to_the_reference_folder() {
    // built at run time so that this file does not name it
    let needle = format!("..{}shared", std::path::MAIN_SEPARATOR);
    let root = repo();
    let files = tracked_files(&root);
    assert!(
        files.len() > 50,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let mut found = Vec::new();
    for file in files {
        if is_documentation(&file) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&file) else {
            continue; // listed but deleted in the work tree
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in mentions(&text, &needle) {
            found.push(format!(
                "{}:{line}",
                file.strip_prefix(&root).unwrap_or(&file).display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "these files refer to {needle}, which a clone does not have (keep what they need in the repository):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_check_finds_a_mention() {
    let needle = format!("..{}shared", std::path::MAIN_SEPARATOR);
    let text = format!("line one\npython3 {needle}/workloads/gen.py\n");
    assert_eq!(mentions(&text, &needle), vec![2]);
    assert!(is_documentation(Path::new("README.md")));
    assert!(!is_documentation(Path::new("scripts/test")));
}
