//! Snapshots and forks of a sandbox's files. A snapshot copies a sandbox's
//! home (/home/user) into a named template on disk (DATA_DIR/
//! sandbox-templates/NAME), which new sandboxes start from; a fork copies
//! it straight into a new sandbox made with the same settings. The source is
//! frozen while it is copied, so the copy is of one moment. What is copied:
//! the home's files, directories and links, owners and modes; not /tmp, not
//! processes, not the code interpreter's memory (see the README).

use super::copy::{copy_tree, open_dir, Budget};
use super::live::{LiveSandbox, SandboxInfo};
use super::{CreateSandbox, SandboxesError};
use crate::engine::Engine;
use crate::store::now;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

const TEMPLATES_DIR: &str = "sandbox-templates";
/// Entries one copy may take.
pub(super) const MAX_ENTRIES: u64 = 200_000;
/// Templates one daemon keeps.
const MAX_TEMPLATES: usize = 256;

/// A template, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    pub created_at: f64,
    /// The sandbox it was taken from.
    pub source: String,
    pub image: Option<String>,
    pub bytes: u64,
    pub entries: u64,
}

impl Engine {
    fn templates_dir(&self) -> PathBuf {
        self.config().data_dir.join(TEMPLATES_DIR)
    }

    fn template_dir(&self, name: &str) -> Result<PathBuf, SandboxesError> {
        if !crate::valid_name(name) {
            return Err(SandboxesError::Invalid(format!(
                "template {name:?}: a name is 1 to 63 of a-z, 0-9, '-' and '_'"
            )));
        }
        Ok(self.templates_dir().join(name))
    }

    /// Copies the sandbox's home into the template `name` (a stopped
    /// sandbox is started first).
    pub async fn snapshot_sandbox(
        self: &Arc<Self>,
        id: &str,
        name: &str,
    ) -> Result<TemplateInfo, SandboxesError> {
        let dir = self.template_dir(name)?;
        if dir.exists() {
            return Err(SandboxesError::Conflict(format!(
                "a template named {name:?} exists: remove it first, or pick another name"
            )));
        }
        if self.sandbox_templates()?.len() >= MAX_TEMPLATES {
            return Err(SandboxesError::Conflict(format!(
                "{MAX_TEMPLATES} templates exist, the most kept: remove some first"
            )));
        }
        let sandbox = self.live_sandbox(id).await?;
        let staging = self
            .templates_dir()
            .join(format!(".{name}.{}", alcove_sys::process::random_id()));
        let home = staging.join("home");
        std::fs::create_dir_all(&home)
            .map_err(SandboxesError::io("making the template's directory"))?;
        let budget = Budget {
            bytes: sandbox.info().limits.disk_bytes,
            entries: MAX_ENTRIES,
        };
        let target = home.clone();
        let copied = sandbox
            .with_home_frozen(move |from| {
                let to = open_dir(&target)?;
                copy_tree(from, to.as_fd(), (0, 0), budget)
            })
            .await;
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let info = TemplateInfo {
            name: name.to_owned(),
            created_at: now(),
            source: id.to_owned(),
            image: sandbox.info().image,
            bytes: copied.bytes,
            entries: copied.entries,
        };
        let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
        let placed = std::fs::write(staging.join("template.json"), json)
            .and_then(|()| std::fs::rename(&staging, &dir));
        if let Err(e) = placed {
            let _ = std::fs::remove_dir_all(&staging);
            // Another snapshot of that name was placed first.
            if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) {
                return Err(SandboxesError::Conflict(format!(
                    "a template named {name:?} was saved meanwhile: pick another name, or remove it first"
                )));
            }
            return Err(SandboxesError::Io {
                what: "saving the template",
                source: e,
            });
        }
        Ok(info)
    }

    /// Removes what interrupted snapshots and removals left (names starting
    /// with a dot): at start, when no snapshot is being taken.
    pub(crate) fn clean_template_staging(&self) {
        let Ok(entries) = std::fs::read_dir(self.templates_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    pub fn sandbox_templates(&self) -> Result<Vec<TemplateInfo>, SandboxesError> {
        let mut all = Vec::new();
        let entries = match std::fs::read_dir(self.templates_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(e) => {
                return Err(SandboxesError::Io {
                    what: "listing templates",
                    source: e,
                })
            }
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue; // a snapshot being taken (or one a crash left)
            }
            if let Ok(info) = std::fs::read(entry.path().join("template.json"))
                .map_err(drop)
                .and_then(|b| serde_json::from_slice::<TemplateInfo>(&b).map_err(drop))
            {
                all.push(info);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    pub(super) fn sandbox_template(
        &self,
        name: &str,
    ) -> Result<(TemplateInfo, PathBuf), SandboxesError> {
        let dir = self.template_dir(name)?;
        let info = std::fs::read(dir.join("template.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<TemplateInfo>(&b).ok())
            .ok_or_else(|| SandboxesError::NoTemplate(name.to_owned()))?;
        Ok((info, dir.join("home")))
    }

    pub fn remove_sandbox_template(&self, name: &str) -> Result<(), SandboxesError> {
        let dir = self.template_dir(name)?;
        if !dir.join("template.json").exists() {
            return Err(SandboxesError::NoTemplate(name.to_owned()));
        }
        // Renamed away first: a sandbox starting from it now sees it or nothing.
        let doomed = self.templates_dir().join(format!(
            ".removed-{name}.{}",
            alcove_sys::process::random_id()
        ));
        std::fs::rename(&dir, &doomed).map_err(SandboxesError::io("removing the template"))?;
        std::fs::remove_dir_all(&doomed).map_err(SandboxesError::io("removing the template"))
    }

    /// A new sandbox with the settings of `id` and a copy of its home (a
    /// stopped sandbox is started first); with `memory`, of its code
    /// interpreter's memory too (fork_memory.rs), or an error saying why not.
    pub async fn fork_sandbox(
        self: &Arc<Self>,
        id: &str,
        metadata: Option<BTreeMap<String, String>>,
        memory: bool,
    ) -> Result<SandboxInfo, SandboxesError> {
        let parent = self.live_sandbox(id).await?;
        let mut req: CreateSandbox = parent.request().clone();
        if let Some(metadata) = metadata {
            req.metadata = metadata;
        }
        req.template = None;
        req.parent = Some(id.to_owned());
        if memory {
            return self.fork_with_memory(&parent, req).await;
        }
        let child = self.create_sandbox(req).await?;
        let budget = Budget {
            bytes: parent.info().limits.disk_bytes,
            entries: MAX_ENTRIES,
        };
        let into = self.sandboxes.get(&child.id)?;
        let (owner, target) = (into.owner(), into.home());
        let copied = parent
            .with_home_frozen(move |from| {
                let to = target.open()?;
                copy_tree(from, to.as_fd(), owner, budget)
            })
            .await;
        if let Err(e) = copied {
            let _ = self.remove_sandbox(&child.id).await;
            return Err(e);
        }
        self.sandbox_info(&child.id)
    }
}

impl LiveSandbox {
    /// Runs `copy` on a blocking thread with its home open, the sandbox
    /// frozen meanwhile (and thawed after, if it was running).
    pub(super) async fn with_home_frozen<T: Send + 'static>(
        &self,
        copy: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, SandboxesError> {
        let _one_at_a_time = self.freezer.lock().await;
        let was_running = self.info().state == super::SandboxState::Running;
        self.set_frozen(true).await?;
        let copied = self.with_home(copy).await;
        if was_running {
            self.set_frozen(false).await?;
        }
        copied
    }

    /// As [`Self::with_home_frozen`], but not frozen where no more than
    /// `still` processes run in it: a fork's source, whose agent writes
    /// nothing unasked and whose interpreter waits for its own child
    /// meanwhile, unless its own code does otherwise, which can tear only
    /// its own copy (the copy follows no link and stops at the fork's disk
    /// size). Freezing and thawing would cost more than the copy of a
    /// small home.
    pub(super) async fn with_home_still<T: Send + 'static>(
        &self,
        still: usize,
        copy: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, SandboxesError> {
        match self.process_count() {
            Some(running) if running <= still => self.with_home(copy).await,
            _ => self.with_home_frozen(copy).await,
        }
    }

    async fn with_home<T: Send + 'static>(
        &self,
        copy: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, SandboxesError> {
        let home = self.home();
        let copied = tokio::task::spawn_blocking(move || {
            let home = home.open()?;
            copy(home.as_fd())
        })
        .await;
        match copied {
            Ok(Ok(value)) => Ok(value),
            // Over a copy's bounds (its size, entries or depth): the
            // sandbox's own doing, said as such.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::InvalidData
                ) =>
            {
                Err(SandboxesError::Conflict(format!(
                    "its files cannot be copied: {e}"
                )))
            }
            // Its home went with it (removed meanwhile), or a file went
            // while it was copied.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => match self.ending().await {
                true => Err(SandboxesError::Agent(alcove_agent::LinkError::Gone)),
                false => Err(SandboxesError::Conflict(format!(
                    "a file went away while its files were copied ({e}): try again"
                ))),
            },
            Ok(Err(e)) => Err(SandboxesError::Io {
                what: "copying the sandbox's files",
                source: e,
            }),
            Err(_) => Err(SandboxesError::Start("the copy's thread failed".into())),
        }
    }
}
