//! Where an image's files come from: a directory (an OCI layout) or a tar
//! archive (oci-archive or docker-archive), read in place: a tar is indexed
//! once and each member read at its offset, never extracted to disk.

use crate::metered::{Meter, Metered, MAX_METADATA};
use crate::ImageError;
use alcove_sys::dirfd::{self, Regular, Scope};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// The most bytes of JSON (index, manifest, config) alcove reads.
pub(crate) const MAX_JSON: u64 = 16 << 20;

pub(crate) enum Source {
    /// An OCI layout; `root` is the directory, opened once.
    Dir { root: OwnedFd, path: PathBuf },
    Tar {
        file: File,
        path: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Source {
    pub(crate) fn open(path: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            let root =
                File::open(path).map_err(ImageError::io(format!("opening {}", path.display())))?;
            return Ok(Source::Dir {
                root: root.into(),
                path: path.to_owned(),
            });
        }
        let mut file =
            File::open(path).map_err(ImageError::io(format!("opening {}", path.display())))?;
        let members = index_tar(&mut file).map_err(|e| {
            ImageError::Format(format!(
                "{} is neither a directory nor a readable tar archive ({e}); give an OCI layout directory, an oci-archive or a docker-archive (docker/podman save, skopeo copy)",
                path.display()
            ))
        })?;
        Ok(Source::Tar {
            file,
            path: path.to_owned(),
            members,
        })
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Dir { path: p, .. } | Source::Tar { path: p, .. } => p.display().to_string(),
        }
    }

    pub(crate) fn exists(&self, member: &str) -> bool {
        match self {
            Source::Dir { root, .. } => normalize(member)
                .and_then(|m| CString::new(m).ok())
                .is_some_and(|m| {
                    dirfd::open_regular(root.as_fd(), &m, Scope::Beneath)
                        .is_ok_and(|r| matches!(r, Regular::File(_)))
                }),
            Source::Tar { members, .. } => {
                normalize(member).is_some_and(|m| members.contains_key(&m))
            }
        }
    }

    /// A member's content as a stream, and its size.
    pub(crate) fn reader(&self, member: &str) -> Result<(Box<dyn Read + '_>, u64), ImageError> {
        let missing = || {
            ImageError::Format(format!(
                "{}: {member} is missing from the image",
                self.describe()
            ))
        };
        let name = normalize(member).ok_or_else(missing)?;
        match self {
            Source::Dir { root, .. } => {
                // The layout is untrusted too: no link is followed in it, and
                // what is not a regular file (a FIFO, a device) is not opened.
                let c_name = CString::new(name).map_err(|_| missing())?;
                let file = match dirfd::open_regular(root.as_fd(), &c_name, Scope::Beneath) {
                    Ok(Regular::File(file)) => file,
                    Ok(Regular::Not(_)) => {
                        return Err(format_error(self, member, "is not a regular file"))
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(missing()),
                    Err(e) => {
                        let why = format!("cannot be opened inside the layout ({e})");
                        return Err(format_error(self, member, &why));
                    }
                };
                let size = file
                    .metadata()
                    .map_err(ImageError::io(format!("reading {member}")))?
                    .len();
                Ok((Box::new(file), size))
            }
            Source::Tar { file, members, .. } => {
                let &(offset, size) = members.get(&name).ok_or_else(missing)?;
                Ok((
                    Box::new(Member {
                        file,
                        offset,
                        left: size,
                    }),
                    size,
                ))
            }
        }
    }

    /// A small member (JSON) read whole.
    pub(crate) fn read_small(&self, member: &str) -> Result<Vec<u8>, ImageError> {
        let (reader, size) = self.reader(member)?;
        if size > MAX_JSON {
            return Err(ImageError::Format(format!(
                "{member} is {size} bytes; more than alcove reads for metadata"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(format!("reading {member}")))?;
        Ok(bytes)
    }
}

fn format_error(source: &Source, member: &str, why: &str) -> ImageError {
    ImageError::Format(format!("{}: {member} {why}", source.describe()))
}

/// A member of a tar archive, read with pread at its offset.
struct Member<'a> {
    file: &'a File,
    offset: u64,
    left: u64,
}

impl Read for Member<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member",
            ));
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Regular files of a tar archive by normalised name: (data offset, size).
fn index_tar(file: &mut File) -> io::Result<HashMap<String, (u64, u64)>> {
    file.seek(SeekFrom::Start(0))?;
    // tar-rs holds long names and PAX records in memory: cap them.
    let meter = Meter::default();
    let mut archive = tar::Archive::new(Metered {
        inner: &mut *file,
        meter: meter.clone(),
    });
    let mut members = HashMap::new();
    let mut links = Vec::new();
    let mut entries = archive.entries_with_seek()?;
    loop {
        meter.allow(MAX_METADATA);
        let Some(entry) = entries.next() else { break };
        let entry = entry?;
        meter.allow(u64::MAX);
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some(name) = normalize(&path) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() {
            members.insert(name, (entry.raw_file_position(), entry.size()));
        } else if kind.is_symlink() {
            // docker save links `<id>/layer.tar` to `../<diff_id>.tar`.
            if let Some(target) = entry.link_name()? {
                let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                let resolved = dir.join(target).to_string_lossy().into_owned();
                links.push((name, resolved));
            }
        }
    }
    for (name, target) in links {
        if let Some(&found) = resolve_dots(&target).and_then(|t| members.get(&t)) {
            members.entry(name).or_insert(found);
        }
    }
    if members.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no files in it"));
    }
    Ok(members)
}

/// `a/../b` as `b`, for link targets inside the archive; `None` if it climbs out.
fn resolve_dots(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `./a//b` as `a/b`; `None` for paths that climb out or are absolute.
fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::{normalize, resolve_dots};

    #[test]
    fn member_names_are_normalised_and_never_climb_out() {
        assert_eq!(
            normalize("./blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(
            resolve_dots("3f65/../8354.tar").as_deref(),
            Some("8354.tar")
        );
        assert_eq!(resolve_dots("../../etc"), None);
    }
}
