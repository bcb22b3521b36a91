//! alcove-image owns images: importing OCI layouts, oci-archive and
//! docker-archive tars (verifying every blob against its digest and
//! unpacking each layer safely, once), the content-addressed store of
//! unpacked layers that sandboxes stack as overlayfs lower dirs, image
//! records with the config alcove honours, leases that keep layers in use
//! from being pruned, pins that keep the images deployed functions run,
//! and pruning.
//!
//! It knows nothing of sandboxes: callers turn an [`ImageRecord`] into a
//! sandbox's layers, environment and user.

mod digest;
mod import;
mod manifest;
mod metered;
mod names;
mod pins;
mod source;
mod store;
mod unpack;

pub use import::{import, ImportOptions, ImportReport};
pub use pins::Pin;
pub use store::{ImageRecord, ImageSummary, LayerInfo, Lease, RunConfig, Store, DEFAULT_STORE};
pub use unpack::Limits;

use std::io;

/// What went wrong with an image, its archive or the store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The request itself is wrong (a bad name, a missing file).
    #[error("{0}")]
    Invalid(String),
    /// The archive is not an image alcove can read, or is inconsistent.
    #[error("{0}")]
    Format(String),
    /// A blob's content does not match the digest that names it.
    #[error("{what} does not match its digest: expected sha256:{expected}, got sha256:{actual}; the archive is corrupt or was altered")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    /// A layer tried to write outside its directory, or holds what alcove refuses.
    #[error("layer {layer}: {why}; the import is refused")]
    Refused { layer: String, why: String },
    /// A layer unpacks to more than the limits allow.
    #[error(
        "layer {layer}: {why}; the import is refused (a decompression bomb, or raise the limit)"
    )]
    Limit { layer: String, why: String },
    #[error("no image named {0:?}: see `alcove image ls`")]
    NotFound(String),
    /// A short name that fits several images.
    #[error("{name:?} could be any of {}: give the whole name", candidates.join(", "))]
    Ambiguous {
        name: String,
        candidates: Vec<String>,
    },
    /// An image that deployed functions run.
    #[error("image {name} is pinned by {holders}: remove them first, or force it (their versions keep running it; prune keeps its layers until they are removed)")]
    Pinned { name: String, holders: String },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
        let what = what.into();
        move |source| ImageError::Io { what, source }
    }
}
