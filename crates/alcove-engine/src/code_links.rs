//! Symbolic links in function code: which ones stay inside the code directory.
//!
//! Shared by the CLI (which checks before packing, naming the file) and the
//! daemon (which checks again, the archive being untrusted). A link is kept
//! as a link and resolved only inside the sandbox, where the code is at /fn;
//! neither side ever follows one.

use std::path::{Component, Path};

/// Why the link at `link` (a path relative to the code directory) pointing
/// at `target` leaves the code directory, or `None` when it stays inside.
///
/// Relative targets are resolved lexically against the link's own
/// directory; absolute ones are refused (the code directory has another
/// path on the host than in the sandbox). The check is lexical: a target
/// that leads through another link of the tree is judged by its text
/// alone, which is safe because nothing on the host follows it; inside the
/// sandbox such a chain can only reach the sandbox's own read-only view.
///
/// ```
/// use alcove_engine::link_leaves;
/// use std::path::Path;
/// assert!(link_leaves(Path::new("lib/pkg"), Path::new("../vendor/pkg")).is_none());
/// assert!(link_leaves(Path::new("venv/bin/python3"), Path::new("/usr/bin/python3")).is_some());
/// ```
pub fn link_leaves(link: &Path, target: &Path) -> Option<&'static str> {
    if target.as_os_str().is_empty() {
        return Some("an empty link target");
    }
    if target.is_absolute() {
        return Some("links must be relative to stay inside it");
    }
    let mut depth: usize = link.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return Some("its `..` climb above the code directory"),
            },
            Component::RootDir | Component::Prefix(_) => {
                return Some("links must be relative to stay inside it")
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_are_kept_and_links_out_are_named() {
        let inside = [
            ("lib/pkg", "../vendor/pkg"),
            ("bin/tool", "../lib/tool.py"),
            ("a", "b"),
            ("a", "."),
            ("x/y/z", "../../w/./v"),
            ("x/y", ".."),
        ];
        for (link, target) in inside {
            assert_eq!(
                link_leaves(Path::new(link), Path::new(target)),
                None,
                "{link} -> {target}"
            );
        }
        let outside = [
            ("venv/bin/python3", "/usr/bin/python3"),
            ("a", ".."),
            ("x/y", "../.."),
            ("x/y", "../z/../../w"),
            ("a", ""),
            ("a", "/fn/b"),
        ];
        for (link, target) in outside {
            assert!(
                link_leaves(Path::new(link), Path::new(target)).is_some(),
                "{link} -> {target}"
            );
        }
    }
}
