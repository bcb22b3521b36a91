//! Packing a function's code directory (`fn deploy --code DIR`) into the tar
//! archive the daemon stores: links that stay inside kept as links, links
//! that leave refused with the file named, `.alcoveignore` (gitignore syntax)
//! and `.git` left out.

use anyhow::{bail, Context};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::{Path, PathBuf};

/// The ignore file read from the top of the code directory.
pub const IGNORE_FILE: &str = ".alcoveignore";

/// The most bytes of archive a deploy can carry (it travels base64 in a
/// request body of at most [`alcove_api::MAX_DEPLOY_BODY`]).
const MAX_PACKED: u64 = alcove_api::MAX_DEPLOY_BODY as u64 / 4 * 3;

/// A tar archive of `dir`'s contents, never following a link: files,
/// directories, and links whose target stays inside `dir` (checked as the
/// daemon checks them, so the error names the file before anything is sent).
/// Paths `.alcoveignore` matches, and `.git`, are left out. Entries are in
/// name order with fixed times and owners, so the same tree packs the same.
pub fn pack_code(dir: &Path) -> anyhow::Result<Vec<u8>> {
    if !dir.is_dir() {
        bail!("--code {}: not a directory", dir.display());
    }
    let ignore = ignore_rules(dir)?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    // A file with holes is sent whole: the daemon takes plain files only.
    builder.sparse(false);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut packer = Packer {
        top: dir,
        ignore,
        builder,
        packed: 0,
    };
    packer.walk(Path::new(""))?;
    packer
        .builder
        .into_inner()
        .context("finishing the code archive")
}

fn ignore_rules(dir: &Path) -> anyhow::Result<Gitignore> {
    let mut rules = GitignoreBuilder::new(dir);
    // A repository's history is never code to run.
    rules.add_line(None, ".git").expect("a valid pattern");
    let file = dir.join(IGNORE_FILE);
    if file.is_file() {
        if let Some(e) = rules.add(&file) {
            bail!("{}: {e}", file.display());
        }
    }
    rules
        .build()
        .with_context(|| format!("reading {}", file.display()))
}

struct Packer<'a> {
    top: &'a Path,
    ignore: Gitignore,
    builder: tar::Builder<Vec<u8>>,
    /// Bytes of archive so far, counted before each entry is read.
    packed: u64,
}

impl Packer<'_> {
    /// Packs the entries of `rel` (a directory relative to the top).
    fn walk(&mut self, rel: &Path) -> anyhow::Result<()> {
        let here = self.top.join(rel);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&here)
            .with_context(|| format!("listing {}", here.display()))?
            .map(|e| e.map(|e| rel.join(e.file_name())))
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", here.display()))?;
        names.sort();
        for rel in names {
            let path = self.top.join(&rel);
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let kind = meta.file_type();
            if self.ignore.matched(&rel, kind.is_dir()).is_ignore() {
                continue;
            }
            let size = if kind.is_file() { meta.len() } else { 0 };
            self.packed += 1024 + size.div_ceil(512) * 512; // a header or two, and the blocks
            if self.packed > MAX_PACKED {
                bail!(
                    "{} is over {} MiB packed, the most a deploy carries (at {}): \
                     leave large files out with {IGNORE_FILE}",
                    self.top.display(),
                    MAX_PACKED >> 20,
                    path.display()
                );
            }
            if kind.is_symlink() {
                self.link(&rel, &path)?;
            } else if kind.is_dir() {
                self.builder
                    .append_dir(&rel, &path)
                    .with_context(|| format!("packing {}", path.display()))?;
                self.walk(&rel)?;
            } else if kind.is_file() {
                self.builder
                    .append_path_with_name(&path, &rel)
                    .with_context(|| format!("packing {}", path.display()))?;
            } else {
                bail!(
                    "{} is not a file, directory or link (a socket, FIFO or device): \
                     remove it or list it in {IGNORE_FILE}",
                    path.display()
                );
            }
        }
        Ok(())
    }

    fn link(&mut self, rel: &Path, path: &Path) -> anyhow::Result<()> {
        let target =
            std::fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(why) = alcove_engine::link_leaves(rel, &target) {
            bail!(
                "{} -> {} leaves the code directory: {why}. Only links that stay inside \
                 are kept (they resolve in the sandbox, where the code is at /fn).{}",
                path.display(),
                target.display(),
                hint(rel)
            );
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        header.set_mtime(0);
        self.builder
            .append_link(&mut header, rel, &target)
            .with_context(|| format!("packing {}", path.display()))
    }
}

/// What to do about a link out, where the usual culprit is recognisable.
fn hint(rel: &Path) -> String {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let in_bin = rel
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "bin");
    if in_bin && name.starts_with("python") {
        let venv = rel.parent().and_then(Path::parent).unwrap_or(Path::new(""));
        format!(
            " This is a virtualenv's interpreter: make it with `python3 -m venv --copies`, \
             or leave the venv's bin/ out ({IGNORE_FILE}) and run the handler with the system \
             python and PYTHONPATH=/fn/{}/lib/pythonX.Y/site-packages.",
            venv.display()
        )
    } else {
        format!(" Copy the file in instead, or list it in {IGNORE_FILE}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entries(tar: &[u8]) -> Vec<(String, Option<String>)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (path, link)
            })
            .collect()
    }

    #[test]
    fn links_inside_are_packed_as_links_and_ignored_paths_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("vendor/pkg")).unwrap();
        std::fs::create_dir_all(d.join("lib")).unwrap();
        std::fs::create_dir_all(d.join(".git/objects")).unwrap();
        std::fs::create_dir_all(d.join("cache")).unwrap();
        std::fs::write(d.join("vendor/pkg/__init__.py"), "X = 1\n").unwrap();
        std::fs::write(d.join("cache/big"), "x").unwrap();
        std::fs::write(d.join("notes.log"), "x").unwrap();
        std::fs::write(d.join("keep.log"), "x").unwrap();
        std::fs::write(d.join(".git/HEAD"), "x").unwrap();
        std::fs::write(d.join(IGNORE_FILE), "*.log\n!keep.log\ncache/\n").unwrap();
        symlink("../vendor/pkg", d.join("lib/pkg")).unwrap();
        let tar = pack_code(d).unwrap();
        let got = entries(&tar);
        let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert!(names.contains(&"vendor/pkg/__init__.py"), "{names:?}");
        assert!(names.contains(&"keep.log"), "{names:?}");
        for gone in ["notes.log", "cache", "cache/big", ".git", ".git/HEAD"] {
            assert!(!names.contains(&gone), "{gone} packed: {names:?}");
        }
        assert!(got.contains(&("lib/pkg".into(), Some("../vendor/pkg".into()))));
        assert_eq!(tar, pack_code(d).unwrap(), "packing is deterministic");
    }

    #[test]
    fn a_link_out_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("venv/bin")).unwrap();
        symlink("/usr/bin/python3", dir.path().join("venv/bin/python3")).unwrap();
        let err = format!("{:#}", pack_code(dir.path()).unwrap_err());
        let named = format!(
            "{}/venv/bin/python3 -> /usr/bin/python3 leaves the code directory",
            dir.path().display()
        );
        assert!(err.contains(&named), "{err}");
        assert!(err.contains("python3 -m venv --copies"), "{err}");
        std::fs::write(dir.path().join(IGNORE_FILE), "venv/bin/\n").unwrap();
        pack_code(dir.path()).expect("an ignored link is not checked");
    }
}
